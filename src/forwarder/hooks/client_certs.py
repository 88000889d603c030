"""Client certificates for mTLS callbacks, as the private files requests needs them in.

requests takes a client certificate and key only as file names. A file pair is written once per
distinct certificate and key and reused by later tasks; the least recently used pairs beyond
``CERT_PAIRS_KEPT`` are removed once no call is using them (a new TLS connection reads the files).
Everything is removed at ``close`` or process exit, by the process that wrote it only: a forked
child's exit handler must not remove the files its parent is still using.

A process killed outright (SIGKILL, the OOM killer) runs no exit handler, so each folder holds a
lock file that its process keeps locked for as long as it lives: the kernel releases the lock when
the process dies however it dies, and the next ``ClientCerts`` built (at the worker's start), or
the next folder made (by a pool process replacing a killed one), removes the folders no process
holds. A lock, not a pid: a pid seen from another container sharing ``/dev/shm`` may look dead
while its process is alive.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forwarder.config.hooks import MtlsAuth

__all__ = ["CERT_PAIRS_KEPT", "ClientCerts", "remove_stale_folders"]

# Distinct client certificates whose files are kept between tasks; more are written again on use.
CERT_PAIRS_KEPT = 32
FOLDER_PREFIX = "forwarder-callback-"
LOCK_NAME = ".lock"


def _parent_folder() -> str | None:
    # tmpfs where there is one, so that private keys stay off disk.
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def remove_stale_folders(parent: str | None = None) -> list[Path]:
    """Remove this user's certificate folders whose process has died; returns those removed."""
    removed = []
    base = Path(parent or _parent_folder() or tempfile.gettempdir())
    for folder in base.glob(f"{FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            if _is_stale(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _is_stale(folder: Path) -> bool:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        # Just made by a process yet to lock it, or by a version without locks: not ours to judge.
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its process is alive
    finally:
        os.close(fd)
    return True


@dataclass
class _CertPair:
    cert: str
    key: str
    users: int = 0


class ClientCerts:
    """The certificate and key files of the client certificates in use, written on demand."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._dir: str | None = None
        self._pairs: OrderedDict[str, _CertPair] = OrderedDict()
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._held: int | None = None  # the folder's lock file, locked while this process lives
        remove_stale_folders()

    @contextlib.contextmanager
    def files(self, auth: MtlsAuth) -> Iterator[tuple[str, str]]:
        """``(cert file, key file)`` holding ``auth``, kept for as long as the block runs."""
        digest = hashlib.sha256(f"{auth.cert}\0{auth.key}".encode()).hexdigest()
        with self._lock:
            pair = self._pairs.get(digest) or self._write(auth)
            self._pairs[digest] = pair
            self._pairs.move_to_end(digest)
            pair.users += 1
        try:
            yield pair.cert, pair.key
        finally:
            with self._lock:
                pair.users -= 1
                self._trim()

    def _write(self, auth: MtlsAuth) -> _CertPair:
        if self._dir is None:
            # A pool process replacing one that was killed finds that one's folder here.
            remove_stale_folders()
            # mkdtemp makes it 0700.
            self._dir = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=_parent_folder())
            self._held = os.open(
                os.path.join(self._dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600
            )
            fcntl.flock(self._held, fcntl.LOCK_EX)
            atexit.register(self.close)
        name = os.path.join(self._dir, str(next(self._names)))
        pair = _CertPair(cert=f"{name}.crt", key=f"{name}.key")
        for path, text in ((pair.cert, auth.cert), (pair.key, auth.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        return pair

    def _trim(self) -> None:
        idle = [digest for digest, pair in self._pairs.items() if not pair.users]
        for digest in idle[: max(0, len(self._pairs) - CERT_PAIRS_KEPT)]:
            pair = self._pairs.pop(digest)
            for path in (pair.cert, pair.key):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def close(self) -> None:
        with self._lock:
            if self._dir is None or os.getpid() != self._pid:
                return
            shutil.rmtree(self._dir, ignore_errors=True)
            if self._held is not None:
                os.close(self._held)
                self._held = None
            self._dir = None
            self._pairs.clear()
