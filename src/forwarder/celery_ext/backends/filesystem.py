"""File result backend (Celery's) for the embedded default, with the forwarder's additions.

Results hold callback credentials and model replies: each file is written 0600 (the folder is
made 0700 by ``forwarder.celery_ext.brokers``), whole, under a temporary name and renamed into
place, so a reader never sees half a result. The compare-and-set of STARTED and CANCELED runs
under an exclusive lock on one lock file in the folder, taken by every process that writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from typing import Any

from celery.backends.filesystem import FilesystemBackend as CeleryFilesystemBackend

from forwarder.celery_ext.backends.base import ForwarderBackendMixin

__all__ = ["FilesystemBackend"]

LOCK_NAME = b".forwarder-lock"
FILE_MODE = 0o600


class FilesystemBackend(ForwarderBackendMixin, CeleryFilesystemBackend):  # type: ignore[misc]
    """Celery's file backend, storing ``custom`` with every failure; admission by key/value."""

    def set(self, key: bytes, value: Any) -> None:
        path = self._filename(key)
        temporary = path + f".{uuid.uuid4().hex}.tmp".encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(value if isinstance(value, bytes) else str(value).encode())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def _set_if_unchanged(self, key: bytes, expected: Any, value: Any) -> bool:
        with self._locked():
            if self.get(key) != expected:
                return False
            self.set(key, value)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._filename(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        """Every stored key starting with ``prefix``: one file each in the results folder."""
        # Celery keeps the folder as bytes.
        for name in sorted(map(os.fsdecode, os.listdir(self.path))):
            if name.startswith(prefix):
                yield name
