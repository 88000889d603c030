"""File result backend (Celery's) for the embedded default, with the forwarder's additions."""

from __future__ import annotations

from celery.backends.filesystem import FilesystemBackend as CeleryFilesystemBackend

from forwarder.celery_ext.backends.base import ForwarderBackendMixin

__all__ = ["FilesystemBackend"]


class FilesystemBackend(ForwarderBackendMixin, CeleryFilesystemBackend):  # type: ignore[misc]
    """Celery's file backend, storing ``custom`` with every failure; admission by key/value."""
