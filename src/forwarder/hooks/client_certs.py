"""Client certificates for mTLS callbacks, as the private files requests needs them in.

requests takes a client certificate and key only as file names. A file pair is written once per
distinct certificate and key and reused by later tasks; the least recently used pairs beyond
``CERT_PAIRS_KEPT`` are removed once no call is using them (a new TLS connection reads the files).
Everything is removed at ``close`` or process exit, by the process that wrote it only: a forked
child's exit handler must not remove the files its parent is still using.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from forwarder.config.hooks import MtlsAuth

__all__ = ["CERT_PAIRS_KEPT", "ClientCerts"]

# Distinct client certificates whose files are kept between tasks; more are written again on use.
CERT_PAIRS_KEPT = 32


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
            # tmpfs where there is one, so that private keys stay off disk; mkdtemp makes it 0700.
            shm = "/dev/shm"
            self._dir = tempfile.mkdtemp(
                prefix="forwarder-callback-",
                dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None,
            )
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
            self._dir = None
            self._pairs.clear()
