"""A callback receiver in the test's own process: records every POST, answers from a script."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from forwarder.devtools.localrun import HOST

__all__ = ["CallbackReceiver", "Received", "callback_receiver"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """An HTTP server in this process that records every POST and answers ``statuses`` in turn.

    Once ``statuses`` is used up it answers 200.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/callback") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def by_task_id(self) -> dict[str, Received]:
        with self._lock:
            return {r.json()["task_id"]: r for r in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    """A receiver listening on 127.0.0.1 for this test; shut down after it."""
    receiver = CallbackReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
