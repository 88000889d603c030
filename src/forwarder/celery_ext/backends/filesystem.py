"""File result backend (Celery's) for the embedded default, with the forwarder's additions."""

from __future__ import annotations

import os
from collections.abc import Iterator

from celery.backends.filesystem import FilesystemBackend as CeleryFilesystemBackend

from forwarder.celery_ext.backends.base import ForwarderBackendMixin

__all__ = ["FilesystemBackend"]


class FilesystemBackend(ForwarderBackendMixin, CeleryFilesystemBackend):  # type: ignore[misc]
    """Celery's file backend, storing ``custom`` with every failure; admission by key/value."""

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        """Every stored key starting with ``prefix``: one file each in the results folder."""
        # Celery keeps the folder as bytes.
        for name in sorted(map(os.fsdecode, os.listdir(self.path))):
            if name.startswith(prefix):
                yield name
