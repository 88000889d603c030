"""Everything that extends Celery, kombu or billiard: broker and backend wiring, result backends,
the Redis transport, the prefork pool and SQS visibility. Their private names are used here only.
"""
