"""File result backend (Celery's) for the embedded default, with the ``custom`` error payload."""

from __future__ import annotations

from celery.backends.filesystem import FilesystemBackend as CeleryFilesystemBackend

from forwarder.celery_ext.backends.base import ErrorPayloadMixin

__all__ = ["FilesystemBackend"]


class FilesystemBackend(ErrorPayloadMixin, CeleryFilesystemBackend):  # type: ignore[misc]
    """Celery's file backend, storing ``custom`` with every failure."""
