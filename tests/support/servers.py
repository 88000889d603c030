"""What the session's servers share: a skip where one is not installed, a bounded start, a stop."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, TypeVar

import pytest

from forwarder.devtools.localrun import HOST, Child

__all__ = ["LocalHTTPServer", "QuietHandler", "running", "server_missing"]

Address = TypeVar("Address")
Server = TypeVar("Server", bound="LocalHTTPServer")


def server_missing(reason: str) -> NoReturn:
    """Skip the test for a server that is not installed here; fail it when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is an error")
    pytest.skip(reason)


@contextmanager
def running(name: str, start: Callable[[], tuple[Child, Address]]) -> Iterator[Address]:
    """The address of a server ``start`` brought up (the test fails if it did not); stopped after."""
    try:
        child, address = start()
    except RuntimeError as exc:
        pytest.fail(f"{name} did not start: {exc}")
    try:
        yield address
    finally:
        child.stop(signal.SIGTERM, timeout=10)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (the test's output stays its own) and reads bodies."""

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalHTTPServer:
    """An HTTP server in this process on a free port of 127.0.0.1, serving from a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = ThreadingHTTPServer((HOST, port), handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self: Server) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
