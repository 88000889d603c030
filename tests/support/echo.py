"""The echo model server as a test starts it: a child process that can stop and start again."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.localrun import HOST, Child, start_echo_server
from support.env import env_changes

__all__ = ["EchoServer"]


class EchoServer:
    """``python -m forwarder echo-server`` in a subprocess; can stop and start on the same port."""

    def __init__(self, log_dir: Path, name: str, port: int = 0, args: Sequence[str] = ()) -> None:
        self.log_path = log_dir / f"{name}.log"
        self.port = port
        self.args = list(args)
        self.child: Child | None = None

    def start(self, timeout: float = 15.0) -> EchoServer:
        assert self.child is None or not self.child.running, "echo server already running"
        try:
            self.child, self.port = start_echo_server(
                self.log_path, *self.args, port=self.port, env=env_changes(), timeout=timeout
            )
        except RuntimeError as exc:
            pytest.fail(f"echo server did not start: {exc}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return None if self.child is None else self.child.stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def get(self, route: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{route}", timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        assert status == 200, body
        return dict(body)
