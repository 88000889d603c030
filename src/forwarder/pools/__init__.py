"""Worker pools: Celery's, where they need a fix for how the forwarder runs them."""
