"""Result backends: Celery's own, extended with model-engine's ``custom`` error payload and the
forwarder's admission, cancel markers and stopped states.

Each module subclasses one Celery backend with ``ForwarderBackendMixin`` (``base``);
``BACKEND_CLASSES`` maps a result-backend URL scheme to the class that serves it.
"""

from __future__ import annotations

BACKEND_CLASSES = {
    "redis": "forwarder.celery_ext.backends.redis:RedisBackend",
    "rediss": "forwarder.celery_ext.backends.redis:RedisBackend",
    "file": "forwarder.celery_ext.backends.filesystem:FilesystemBackend",
    "s3": "forwarder.celery_ext.backends.s3:S3Backend",
}

__all__ = ["BACKEND_CLASSES"]
