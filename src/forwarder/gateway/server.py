"""Serving the gateway: the listening socket, uvicorn's limits and a deadline on request headers.

uvicorn bounds the connections and requests at once (``limit_concurrency``: 503 past it) and the
idle time between requests, but not the time a client takes to send its headers: a client
sending one header byte now and then (slowloris) would hold its connection for ever. The
protocol here closes a connection whose request headers are not in within
``header_timeout_seconds`` of its opening or of the previous response. It reads uvicorn's
protocol attributes ``cycle``, ``loop``, ``transport`` and ``on_response_complete``, the same in
its httptools and h11 protocols (tests/security/test_gateway_edges.py holds them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

import uvicorn
from prometheus_client import start_http_server
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from forwarder.config.settings import Settings
from forwarder.errors import ConfigError
from forwarder.gateway.app import create_app

__all__ = ["header_deadline_protocol", "run_gateway"]

log = logging.getLogger("forwarder.gateway.app")

LISTEN_BACKLOG = 2048  # uvicorn's default


def header_deadline_protocol(seconds: float, base: type[Any] = AutoHTTPProtocol) -> type[Any]:
    """uvicorn's HTTP protocol, closing a connection whose headers take longer than ``seconds``."""

    class HeaderDeadline(base):  # type: ignore[misc]
        _deadline: asyncio.TimerHandle | None = None
        _armed_cycle: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._armed_cycle:
                self._disarm()  # a new request's headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers, on this kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._armed_cycle = self.cycle
            self._deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            cycle = self.cycle
            # Still no new request, and none in progress (a pipelined one may have started).
            idle = cycle is None or cycle.response_complete
            if cycle is self._armed_cycle and idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def _address(host: str, port: int) -> tuple[Any, ...]:
    try:
        return socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError("gateway.host (--host)", host, f"an address ({exc.strerror})") from None


def _refuse_anonymous(settings: Settings, address: Any) -> None:
    gateway = settings.gateway
    if gateway.auth_tokens or gateway.allow_anonymous:
        return
    if not ipaddress.ip_address(address[0].partition("%")[0]).is_loopback:
        raise ConfigError(
            "gateway.host (--host)",
            gateway.host,
            "a loopback address (127.0.0.1, ::1) when no gateway.auth_tokens are set; "
            "set tokens, or give --allow-anonymous to serve anyone who can reach it",
        )


def _listening_socket(settings: Settings) -> socket.socket:
    host, port = settings.gateway.host, settings.gateway.port
    family, kind, proto, _, address = _address(host, port)
    _refuse_anonymous(settings, address)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            "gateway.port (--port)", port, f"a port free on {host} ({exc.strerror})"
        ) from None
    # Listening from here on, so that a client which read the logged port is queued, not refused,
    # while the app starts.
    sock.listen(LISTEN_BACKLOG)
    return sock


def _serve_metrics(settings: Settings, registry: Any) -> None:
    gateway = settings.gateway
    if gateway.metrics_port is None or gateway.metrics_access == "disabled":
        return
    try:
        start_http_server(gateway.metrics_port, gateway.metrics_host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            "gateway.metrics_port",
            gateway.metrics_port,
            f"a port free on {gateway.metrics_host} ({exc.strerror})",
        ) from None
    log.info("gateway metrics on http://%s:%d/metrics", gateway.metrics_host, gateway.metrics_port)


def run_gateway(settings: Settings) -> int:
    """Serve the gateway until SIGTERM or SIGINT; the exit code."""
    gateway = settings.gateway
    sock = _listening_socket(settings)
    host, port = sock.getsockname()[:2]
    app = create_app(settings)
    app.state.listen_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    _serve_metrics(settings, app.state.metrics_registry)
    config = uvicorn.Config(
        app,
        http=header_deadline_protocol(gateway.header_timeout_seconds),
        limit_concurrency=gateway.max_connections,
        log_config=None,  # the process's logging, as configured by the CLI
        log_level=settings.worker.log_level.lower(),
        access_log=settings.worker.log_level == "DEBUG",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
