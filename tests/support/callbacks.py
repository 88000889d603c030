"""A callback receiver in the test's own process: records every POST, answers from a script."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from forwarder.devtools.localrun import HOST
from support.servers import LocalHTTPServer, QuietHandler
from support.waiting import wait_for

__all__ = ["CallbackReceiver", "DrippingReceiver", "Received", "callback_receiver"]


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

    def calls_for(self, task_ids: list[str], timeout: float) -> dict[str, Received]:
        """Once as many calls as ``task_ids`` came (within ``timeout`` s): one per task, by id."""
        wait_for(
            lambda: len(self.received) >= len(task_ids),
            timeout,
            lambda: f"callbacks: {len(self.received)} of {len(task_ids)}",
        )
        calls = self.by_task_id()
        assert set(calls) == set(task_ids)
        return calls


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    """A receiver listening on 127.0.0.1 for this test; shut down after it."""
    with CallbackReceiver() as receiver:
        yield receiver


class DrippingReceiver:
    """A receiver that reads each request, then answers one byte every ``interval`` seconds.

    Every byte comes well inside any per-read timeout, so only a total deadline ends the call.
    ``connections`` counts the calls it took; each stops dripping once its caller hangs up.
    """

    REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.connections = 0
        self.listener = socket.create_server((HOST, 0))
        self.port = int(self.listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "/callback") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                for index in range(len(self.REPLY)):
                    conn.sendall(self.REPLY[index : index + 1])
                    if self._closed.wait(self.interval):
                        return
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self.listener.close()

    def __enter__(self) -> DrippingReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
