"""Zero-timeout readiness checks on the kernel's poll under gevent, not on gevent's green poll.

Before every command redis-py asks whether the pooled connection holds unread data, and before
every request urllib3 asks whether the kept-alive connection was dropped: each a ``select.poll()``
with timeout 0, which can never block. gevent's patched poll serves them with watchers, a
greenlet and a hub switch; on the Redis path that was 7% of a gevent worker's CPU. These polls
now take the kernel's poll when the timeout is 0 and gevent's otherwise, so a wait still lets the
other greenlets run. The two modules' ``select`` binding and their use of ``select.poll`` are
checked by ``tests/unit/test_gevent_polls.py``.
"""

from __future__ import annotations

import importlib
import select
from types import ModuleType
from typing import Any

__all__ = ["READINESS_MODULES", "ZeroTimeoutPoll", "native_readiness_polls"]

# The modules whose ``select.poll()`` is a readiness check before reusing a kept-alive connection.
READINESS_MODULES = ("redis._parsers.hiredis", "urllib3.util.wait")


class ZeroTimeoutPoll:
    """``select.poll``: the kernel's for a timeout of 0, gevent's for a wait."""

    def __init__(self, native: Any, green: Any) -> None:
        self._native = native()
        self._green_factory = green
        self._registered: dict[Any, int] = {}

    def register(self, fd: Any, eventmask: int = select.POLLIN | select.POLLPRI) -> None:
        self._native.register(fd, eventmask)
        self._registered[fd] = eventmask

    def unregister(self, fd: Any) -> None:
        self._native.unregister(fd)
        del self._registered[fd]

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        if timeout == 0:
            return list(self._native.poll(0))
        green = self._green_factory()
        for fd, eventmask in self._registered.items():
            green.register(fd, eventmask)
        return list(green.poll(timeout))


def _select_namespace(native: Any, green: Any) -> ModuleType:
    namespace = ModuleType("select")
    namespace.__dict__.update(vars(select))
    namespace.poll = lambda: ZeroTimeoutPoll(native, green)  # type: ignore[attr-defined]
    return namespace


def native_readiness_polls() -> list[str]:
    """Give the readiness modules that are installed the poll above; returns their names."""
    from gevent import monkey

    native = monkey.get_original("select", "poll")
    green = select.poll
    if native is green:  # not patched: nothing to route around
        return []
    namespace = _select_namespace(native, green)
    rebound = []
    for name in READINESS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.select = namespace  # type: ignore[attr-defined]
        rebound.append(name)
    return rebound
