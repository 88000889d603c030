"""A worker as a test starts it: ``python -m forwarder worker`` in its own process group."""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from forwarder.devtools.localrun import start_forwarder

__all__ = ["READY_RE", "Worker"]

READY_RE = re.compile(r"\S+@\S+ ready\.")


class Worker:
    """``python -m forwarder worker ...`` in its own process group, logging to a file."""

    def __init__(self, args: Sequence[str], env: dict[str, str | None], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.child = start_forwarder(["worker", *self.args], log_path, env, cwd=log_path.parent)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def running(self) -> bool:
        return self.child.running

    def log(self) -> str:
        return self.child.log()

    def is_ready(self) -> bool:
        return bool(READY_RE.search(self.log()))

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        try:
            self.child.wait_for(READY_RE.pattern, timeout)
        except RuntimeError as exc:
            pytest.fail(f"worker not ready within {timeout:g} s: {exc}")
        return self

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to the worker's main process and return its exit status.

        Fails the test (after killing the process group) if it does not exit within ``timeout``.
        """
        status = self.child.stop(sig, timeout)
        if self.child.stop_timed_out:
            pytest.fail(
                f"worker did not exit within {timeout:g} s of signal {sig}:\n{self.child.tail()}"
            )
        return status

    def cleanup(self) -> None:
        """Kill the worker and its whole process group.

        Not a warm shutdown: an idle gevent worker takes ~4 s to stop warmly, and the tests that
        are about shutdown call ``stop()`` themselves. The test's Redis database is discarded.
        """
        self.child.kill()
