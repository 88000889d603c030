"""Redis result backend (Celery's), with the ``custom`` error payload."""

from __future__ import annotations

from celery.backends.redis import RedisBackend as CeleryRedisBackend

from forwarder.backends.base import ErrorPayloadMixin

__all__ = ["RedisBackend"]


class RedisBackend(ErrorPayloadMixin, CeleryRedisBackend):  # type: ignore[misc]
    """Celery's Redis backend, storing ``custom`` with every failure."""
