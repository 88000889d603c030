"""A tiny HTTP "model server" that echoes JSON back, for demos, integration tests and benchmarks.

``POST {predict_route}`` echoes the JSON body unchanged; when the body is an object, its control
keys ``delay`` (extra seconds to sleep), ``status_code`` (reply status), ``raw_text`` (reply
with this text as text/plain) and ``reply_bytes`` (reply with a JSON string of that many bytes,
sent chunked without a length, as a large reply of unknown size comes) shape the reply; with
``stream`` (a number of tokens) the reply is an OpenAI-style chat stream as SSE, one chunk per
token ``token_delay`` seconds apart, then ``data: [DONE]``. ``GET {healthcheck_route}`` reports readiness
once ``ready_after`` seconds have passed, and ``GET /stats`` reports request counters.

Standard library only: it runs as its own process (``python -m forwarder echo-server``), so it
must not drag in requests, celery or gevent (whose monkey-patching would change what we measure).
"""

from __future__ import annotations

import json
import math
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

__all__ = ["EchoServer", "make_server", "serve"]

STATS_ROUTE = "/stats"
LARGE_PIECE = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A buffered wfile lets headers and body leave in one send(), flushed by handle_one_request.
    wbufsize = 64 * 1024
    server: EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        srv, method = self.server, self.command
        # The body is always consumed so that a rejected request cannot desync a keep-alive stream.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return self._json(411, {"error": "chunked request bodies are not supported"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            return self._json(400, {"error": "invalid Content-Length"})
        body = self.rfile.read(length) if length else b""

        path = self.path.split("?", 1)[0]
        routes = {srv.predict_route: "POST", srv.healthcheck_route: "GET", STATS_ROUTE: "GET"}
        allowed = routes.get(path)
        if allowed is None:
            return self._json(404, {"error": f"no route for {method} {path}"})
        if method != allowed:
            return self._json(405, {"error": f"{method} not allowed on {path}"}, allow=allowed)
        if path == srv.predict_route:
            return self._predict(body)
        if path == srv.healthcheck_route:
            if srv.is_ready():
                return self._json(200, {"status": "ready"})
            return self._json(503, {"status": "starting"})
        return self._json(200, srv.stats())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _predict(self, body: bytes) -> None:
        srv = self.server
        with srv.lock:
            srv.predict_requests += 1
            srv.last_traceparent = self.headers.get("traceparent")
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            try:
                payload = json.loads(body)
            except ValueError as exc:
                return self._json(400, {"error": f"request body is not valid JSON: {exc}"})
            delay, status, raw_text = srv.delay, 200, None
            if isinstance(payload, dict):
                extra = payload.get("delay", 0)
                # type() rather than isinstance() rejects bools; inf/nan would break time.sleep.
                if type(extra) not in (int, float) or not math.isfinite(extra) or extra < 0:
                    return self._json(400, {"error": "'delay' must be a finite number >= 0"})
                delay += extra
                status = payload.get("status_code", 200)
                if type(status) is not int or not 100 <= status <= 599:
                    return self._json(400, {"error": "'status_code' must be an int in 100-599"})
                raw_text = payload.get("raw_text")
                if raw_text is not None and not isinstance(raw_text, str):
                    return self._json(400, {"error": "'raw_text' must be a string"})
                size = payload.get("reply_bytes")
                if size is not None and (type(size) is not int or size < 2):
                    return self._json(400, {"error": "'reply_bytes' must be an int >= 2"})
            if delay > 0:
                time.sleep(delay)
            if isinstance(payload, dict) and payload.get("reply_bytes") is not None:
                return self._send_large(payload["reply_bytes"])
            if isinstance(payload, dict) and payload.get("stream") is not None:
                return self._stream(payload)
            if raw_text is not None:
                return self._send(status, raw_text.encode(), "text/plain; charset=utf-8")
            # The original bytes are the most exact echo: no re-encoding of floats or key order.
            return self._send(status, body, "application/json")
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _send_large(self, size: int) -> None:
        """A JSON string of ``size`` bytes, chunked: never held whole, here or by the reader."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b"x" * LARGE_PIECE
        left = size - 2
        self._chunk(b'"')
        while left > 0:
            self._chunk(piece[: min(left, LARGE_PIECE)])
            left -= LARGE_PIECE
        self._chunk(b'"')
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, payload: dict[str, Any]) -> None:
        tokens, pause = payload["stream"], payload.get("token_delay", 0)
        if type(tokens) is not int or tokens < 0:
            return self._json(400, {"error": "'stream' must be an int >= 0"})
        if type(pause) not in (int, float) or not math.isfinite(pause) or pause < 0:
            return self._json(400, {"error": "'token_delay' must be a finite number >= 0"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index in range(tokens + 1):
            last = index == tokens
            delta = {} if last else {"content": f"token{index} "}
            chunk: dict[str, Any] = {
                "object": "chat.completion.chunk",
                "model": "echo",
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
            if last:
                chunk["usage"] = {"completion_tokens": tokens}
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            # Each token leaves at once, as a model's do, not when the write buffer fills.
            self.wfile.flush()
            if pause and not last:
                time.sleep(pause)
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _json(self, status: int, obj: object, allow: str | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", allow)

    def _send(self, status: int, body: bytes, ctype: str, allow: str | None = None) -> None:
        # A body on these would be read as the start of the next response on a keep-alive stream.
        bodiless = status < 200 or status in (204, 304)
        body = b"" if bodiless else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if allow is not None:
            self.send_header("Allow", allow)
        if not bodiless:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class EchoServer(ThreadingHTTPServer):
    """Threaded echo server; build it with :func:`make_server`."""

    daemon_threads = True
    request_queue_size = 128
    delay = 0.0
    ready_after = 0.0
    predict_route = "/predict"
    healthcheck_route = "/readyz"
    verbose = False

    def __init__(self, address: tuple[str, int]) -> None:
        self.lock = threading.Lock()
        self.predict_requests = self.in_flight = self.max_in_flight = 0
        # What a caller passing W3C trace context sent last (None: the last request had none).
        self.last_traceparent: str | None = None
        self.started_at = time.monotonic()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn) that can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # Without this, keep-alive requests stall ~40 ms each (Nagle vs delayed ACK).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-request are routine in benchmarks; not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError) and not self.verbose:
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{self.server_name}:{self.server_port}"

    def is_ready(self) -> bool:
        return time.monotonic() - self.started_at >= self.ready_after

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "last_traceparent": self.last_traceparent,
                "predict_requests": self.predict_requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }


def make_server(
    host: str = "127.0.0.1",
    port: int = 5005,
    *,
    delay: float = 0.0,
    ready_after: float = 0.0,
    predict_route: str = "/predict",
    healthcheck_route: str = "/readyz",
    verbose: bool = False,
) -> EchoServer:
    """Bind and listen (port 0 picks a free port); call ``serve_forever()`` to start serving."""
    server = EchoServer((host, port))
    server.delay, server.ready_after, server.verbose = delay, ready_after, verbose
    server.predict_route, server.healthcheck_route = predict_route, healthcheck_route
    return server


def serve(server: EchoServer) -> None:
    """Serve until SIGTERM or SIGINT (handlers are installed only from the main thread)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs in this very thread: hand it off.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        # The socket is already listening, so connections made after this line are queued.
        print(f"echo server listening on {server.url}", flush=True)
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
