"""Per-task event logs (what a model streamed, then the final state), one module per backend.

``event_log_for(backend)`` gives the log kept beside a result backend: Redis Streams beside
Redis results, JSON-lines files beside the embedded default's, batched objects beside S3's.
"""

from __future__ import annotations

from typing import Any

from forwarder.celery_ext.backends import BACKEND_CLASSES
from forwarder.events.base import CHUNK, KINDS, PROGRESS, STATE, Event, EventLog, EventWriter

__all__ = [
    "CHUNK",
    "KINDS",
    "PROGRESS",
    "STATE",
    "Event",
    "EventLog",
    "EventWriter",
    "event_log_for",
]


def event_log_for(backend: Any, max_length: int | None = None) -> EventLog:
    """The event log beside ``backend`` (one of ``forwarder.celery_ext.backends``)."""
    # By the class's registered name: importing the other backends' modules (redis-py in a
    # worker on S3) would cost a task its first second, and the model call its deadline.
    scheme = _SCHEMES.get(f"{type(backend).__module__}:{type(backend).__qualname__}")
    if scheme in ("redis", "rediss"):
        from forwarder.events.redis import DEFAULT_MAX_LENGTH, RedisEventLog

        return RedisEventLog(backend, max_length or DEFAULT_MAX_LENGTH)
    if scheme == "file":
        from forwarder.events.files import FileEventLog

        return FileEventLog(backend.path)
    if scheme == "s3":
        from forwarder.events.s3 import S3EventLog

        return S3EventLog(backend)
    raise TypeError(f"no event log beside a {type(backend).__name__} result backend")


_SCHEMES = {path: scheme for scheme, path in BACKEND_CLASSES.items()}
