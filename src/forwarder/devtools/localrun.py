"""Child processes on 127.0.0.1 for the demo, the tests and the benchmarks.

The echo model server, a worker, a throwaway ``redis-server`` and moto's AWS endpoint, each with its output in a log
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

__all__ = [
    "HOST",
    "Child",
    "aws_environment",
    "environment",
    "find_redis_server",
    "free_port",
    "start_echo_server",
    "start_forwarder",
    "start_moto",
    "start_redis",
]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0

# Changes to this process's environment: a value of None removes the variable.
EnvChanges = Mapping[str, str | None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def environment(changes: EnvChanges | None = None) -> dict[str, str]:
    """This process's environment with ``changes``; a ``None`` value removes a variable."""
    env = dict(os.environ)
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class Child:
    """A started process, its log file, and a bounded wait for what it prints.

    The log file is appended to; ``log()`` is only what this process wrote, so a process started
    again on the same file (a restart) is not mistaken for its predecessor.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        env: EnvChanges | None = None,
        *,
        cwd: Path | None = None,
    ):
        self.log_path = log_path
        self.stop_timed_out = False
        with log_path.open("ab") as log:
            self._log_start = log.tell()
            # Its own process group, so a stop also reaches whatever it forked.
            self.process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else environment(env),
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` in the log; raises with the log if it never comes."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if not self.running or time.monotonic() >= deadline:
                state = "timed out" if self.running else f"exited {self.process.returncode}"
                raise RuntimeError(f"{pattern!r} not seen ({state}); log:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process, wait up to ``timeout``, then kill its whole group. The exit status.

        ``stop_timed_out`` then says whether it was still running when the time was up.
        """
        self.stop_timed_out = False
        if self.running:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_timed_out = True
        self.kill()
        return int(self.process.returncode)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _started(child: Child, pattern: str, timeout: float) -> re.Match[str]:
    """``child.wait_for(pattern)``, killing the child if it does not come."""
    try:
        return child.wait_for(pattern, timeout)
    except BaseException:
        child.kill()
        raise


def start_forwarder(
    args: Sequence[str],
    log_path: Path,
    env: EnvChanges | None = None,
    *,
    cwd: Path | None = None,
) -> Child:
    """``python -m forwarder ARGS`` with this interpreter."""
    return Child([sys.executable, "-m", "forwarder", *args], log_path, env, cwd=cwd)


def start_echo_server(
    log_path: Path,
    *args: str,
    port: int = 0,
    env: EnvChanges | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> tuple[Child, int]:
    """The echo model server, up and listening; returns it and its port.

    Started again with the port of one that stopped, it takes that port back.
    """
    child = start_forwarder(
        ["echo-server", "--host", HOST, "--port", str(port), *args], log_path, env
    )
    match = _started(child, r"listening on http://127\.0\.0\.1:(\d+)", timeout)
    return child, int(match.group(1))


def find_redis_server() -> str | None:
    """``$REDIS_SERVER`` if set, else ``redis-server`` on PATH, else Debian's."""
    configured = os.environ.get("REDIS_SERVER")
    if configured is not None:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def start_redis(
    folder: Path, *args: str, timeout: float = STARTUP_TIMEOUT, attempts: int = 3
) -> tuple[Child, int]:
    """A throwaway ``redis-server`` without persistence unless ``args`` ask for it.

    On a free port, tried again on another up to ``attempts`` times: a port found free may be
    taken by someone else before redis binds it.
    """
    binary = find_redis_server()
    if binary is None:
        raise FileNotFoundError(
            "redis-server not found ($REDIS_SERVER, PATH or /usr/bin/redis-server): "
            "apt-get install redis-server"
        )
    for attempt in range(1, attempts + 1):
        port = free_port()
        command = [binary, "--port", str(port), "--bind", HOST, "--dir", str(folder)]
        command += ["--save", "", "--appendonly", "no", *args]
        child = Child(command, folder / f"redis-{port}.log")
        try:
            _started(child, "Ready to accept connections", timeout)
        except RuntimeError:
            if attempt >= attempts:
                raise
        else:
            return child, port
    raise ValueError(f"attempts must be at least 1, not {attempts}")


def start_moto(log_path: Path, *, timeout: float = STARTUP_TIMEOUT) -> tuple[Child, str]:
    """moto's server mode (STS, SQS, S3, Firehose over HTTP); returns it and its endpoint URL.

    moto checks no credentials and keeps everything in memory; ``POST /moto-api/reset`` clears it.
    """
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    child = Child(command, log_path)
    _started(child, r"Running on http://127\.0\.0\.1", timeout)
    return child, f"http://{HOST}:{port}"


def aws_environment(endpoint_url: str, region: str = "us-east-1") -> dict[str, str | None]:
    """Environment changes that point every AWS client at ``endpoint_url`` with dummy keys."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
