"""The HTTP gateway: model-engine's async task API on FastAPI, its HTTP edge, models and metrics."""
