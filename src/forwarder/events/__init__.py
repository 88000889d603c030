"""Per-task event logs (what a model streamed, then the final state), one module per backend.

``event_log_for(backend)`` gives the log kept beside a result backend: Redis Streams beside
Redis results, JSON-lines files beside the embedded default's, batched objects beside S3's.
"""

from __future__ import annotations

from typing import Any

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
    from forwarder.celery_ext.backends.filesystem import FilesystemBackend
    from forwarder.celery_ext.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        from forwarder.events.redis import DEFAULT_MAX_LENGTH, RedisEventLog

        return RedisEventLog(backend, max_length or DEFAULT_MAX_LENGTH)
    if isinstance(backend, FilesystemBackend):
        from forwarder.events.files import FileEventLog

        return FileEventLog(backend.path)
    from forwarder.events.s3 import S3EventLog

    return S3EventLog(backend)
