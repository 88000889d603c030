"""A value that belongs to one process: built on first use, built again in a forked child.

Sockets, connection pools, threads and temporary files inherited through fork are the parent's:
a prefork child that used them would share its parent's connections or wait on a lock a parent
thread held at the fork. Every such cache in the forwarder (the model server's connection pool,
the callback's session, the S3 backend's client, the AWS clients, the cancel watcher) holds its
value in a ``ProcessLocal``, which serves each process the value that process built.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ProcessLocal"]

T = TypeVar("T")


class ProcessLocal(Generic[T]):
    """``get()`` returns this process's value, building it with ``build`` once per process.

    Safe from many threads (or greenlets: the lock is created after gevent has patched): one of
    them builds, the others wait for that value. A build that raises leaves nothing, so the next
    ``get()`` tries again.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._owned: tuple[int, T] | None = None  # (pid, value): read and written as one
        # One lock per process: a lock held in the parent at fork time stays held in the child.
        self._locks: dict[int, threading.Lock] = {}

    def get(self) -> T:
        pid = os.getpid()
        owned = self._owned
        if owned is not None and owned[0] == pid:
            return owned[1]
        with self._locks.setdefault(pid, threading.Lock()):
            owned = self._owned
            if owned is None or owned[0] != pid:
                owned = self._owned = (pid, self._build())
            return owned[1]

    def peek(self) -> T | None:
        """This process's value if it has built one, without building it."""
        owned = self._owned
        return owned[1] if owned is not None and owned[0] == os.getpid() else None

    def take(self) -> T | None:
        """Forget this process's value and return it (to be closed); a parent's is left alone."""
        pid = os.getpid()
        with self._locks.setdefault(pid, threading.Lock()):
            owned = self._owned
            if owned is None or owned[0] != pid:
                return None
            self._owned = None
            return owned[1]
