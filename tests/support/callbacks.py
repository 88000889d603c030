"""A callback receiver in the test's own process: records every POST, answers from a script."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from forwarder.devtools.localrun import HOST
from support.servers import LocalHTTPServer, QuietHandler

__all__ = ["CallbackReceiver", "Received", "callback_receiver"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver(LocalHTTPServer):
    """An HTTP server in this process that records every POST and answers ``statuses`` in turn.

    Once ``statuses`` is used up it answers 200; each answer comes ``delay`` seconds after the
    request. ``port``: listen there (a receiver coming back where one was down).
    """

    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self.delay = delay
        self._lock = threading.Lock()
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_body()
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler, port)

    def url(self, path: str = "/callback") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def duplicates(self) -> int:
        """Calls beyond the first for the same ``webhook-id``."""
        with self._lock:
            ids = [r.headers.get("webhook-id") or r.json()["task_id"] for r in self.received]
        return len(ids) - len(set(ids))

    def by_task_id(self) -> dict[str, Received]:
        with self._lock:
            return {r.json()["task_id"]: r for r in self.received}


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    """A receiver listening on 127.0.0.1 for this test; shut down after it."""
    with CallbackReceiver() as receiver:
        yield receiver
