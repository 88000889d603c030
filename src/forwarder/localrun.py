"""Child processes on 127.0.0.1 for the demo, the tests and the benchmarks.

The echo model server, a worker and a throwaway ``redis-server``, each with its output in a log
file, a bounded wait for the line that says it is up, and a stop that never leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Child", "free_port", "start_echo_server", "start_forwarder", "start_redis"]

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """A started process, its log file, and a bounded wait for what it prints."""

    def __init__(
        self, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ):
        self.log_path = log_path
        with log_path.open("ab") as log:
            # Its own process group, so a stop also reaches whatever it forked.
            self.process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` in the log; raises with the log if it never comes."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.process.poll() is not None or time.monotonic() >= deadline:
                state = (
                    f"exited {self.process.returncode}"
                    if self.process.poll() is not None
                    else "timed out"
                )
                raise RuntimeError(f"{pattern!r} not seen ({state}); log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process, wait up to ``timeout``, then kill its whole group. The exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()
        return int(self.process.returncode)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_forwarder(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Child:
    """``python -m forwarder ARGS`` with this interpreter."""
    return Child([sys.executable, "-m", "forwarder", *args], log_path, env)


def start_echo_server(log_path: Path, *args: str, port: int = 0) -> tuple[Child, int]:
    """The echo model server, up and listening; returns it and its port."""
    child = start_forwarder(
        ["echo-server", "--host", "127.0.0.1", "--port", str(port), *args], log_path
    )
    match = child.wait_for(r"listening on http://127\.0\.0\.1:(\d+)")
    return child, int(match.group(1))


def start_redis(folder: Path, *args: str) -> tuple[Child, int]:
    """A throwaway ``redis-server`` without persistence unless ``args`` ask for it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get install redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no", *args]
    child = Child(command, folder / f"redis-{port}.log")
    child.wait_for("Ready to accept connections")
    return child, port
