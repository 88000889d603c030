"""HTTP API to submit, watch, cancel and expire async inference tasks (FastAPI under uvicorn).

Routes (model-engine's first, so its clients work unchanged):

    POST /v1/async-tasks                    EndpointPredictV1Request (+ ttl_seconds, timeout_seconds)
                                            -> {"task_id"}; Idempotency-Key header honoured
    GET  /v1/async-tasks/{task_id}          -> {"task_id", "status", "result", "traceback", "status_code"}
    POST /v1/async-tasks/{task_id}/cancel   -> the same shape; idempotent
    POST /v1/async-tasks/{task_id}/callback/redeliver  -> a failed callback's delivery, again
    GET  /healthz, GET /readyz (the broker answers), /docs, /openapi.json

Tasks go out under the LIRA task name to the configured queue, through the same broker client as
``forwarder submit``. The routes are in ``forwarder.gateway.routes``; this module wires them to
the broker, the idempotency store, the authentication and the body limits, and serves them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from forwarder import __version__
from forwarder.client.broker import ForwarderClient
from forwarder.client.idempotency import IdempotencyStore, open_store
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError

INSTALL_HINT = "the gateway needs FastAPI and uvicorn: pip install 'inference-forwarder[gateway]'"
try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from forwarder.gateway.http import BodyLimits, authorizer
    from forwarder.gateway.metrics import add_metrics
    from forwarder.gateway.models import ErrorResponse
    from forwarder.gateway.routes import (
        READY_TIMEOUT_SECONDS,
        TaskBroker,
        TaskRoutes,
        add_health_routes,
        add_submit_route,
        add_task_routes,
    )
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"{INSTALL_HINT} ({exc.name} is missing)", name=exc.name) from None

__all__ = ["create_app", "run_gateway"]

log = logging.getLogger("forwarder.gateway.app")

LISTEN_BACKLOG = 2048  # uvicorn's default
_ERRORS = (
    (413, "Body larger than max_body_bytes"),
    (415, "Body not JSON"),
    (422, "A field, parameter or header not allowed; loc names it"),
    (503, "The broker or the result store did not answer"),
)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Without pydantic's "input": it would echo secrets such as callback_auth's password.
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]


def _broker_reachable(client: ForwarderClient) -> Callable[[], None]:
    def check() -> None:
        with client.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=READY_TIMEOUT_SECONDS)

    return check


def _no_authentication() -> str:
    return ""


def create_app(
    settings: Settings,
    client: TaskBroker | None = None,
    *,
    idempotency: IdempotencyStore | None = None,
    broker_check: Callable[[], None] | None = None,
) -> FastAPI:
    """The gateway's ASGI app; without ``client``, a ``ForwarderClient`` on ``settings``.

    ``broker_check`` (raising when the broker does not answer) backs ``/readyz``; it is needed
    with a ``client`` that is not a ``ForwarderClient``.
    """
    if client is None:
        client = ForwarderClient(settings)
    if broker_check is None:
        if not isinstance(client, ForwarderClient):
            raise TypeError("create_app: broker_check is needed with a client of another kind")
        broker_check = _broker_reachable(client)
    broker: TaskBroker = client
    store = idempotency if idempotency is not None else open_store(settings)
    gateway = settings.gateway
    queue = settings.worker.queue

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = getattr(app.state, "listen_url", None)
        log.info("gateway listening on %s (queue %s)", url or "(ASGI)", queue)
        try:
            yield
        finally:
            broker.close()
            store.close()

    app = FastAPI(
        title="inference-forwarder gateway",
        version=__version__,
        description="Submit, watch and cancel async inference tasks (model-engine compatible).",
        lifespan=lifespan,
    )
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS
    }
    authorize: Callable[..., str] = _no_authentication
    if gateway.auth_tokens:
        authorize = authorizer(gateway.auth_tokens)
        responses[401] = {"model": ErrorResponse, "description": "No token, or not an accepted one"}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    deliveries = None
    if isinstance(client, ForwarderClient):
        from forwarder.gateway.callbacks import CallbackDeliveries

        deliveries = CallbackDeliveries(settings, client.app)
    routes = TaskRoutes(
        broker,
        store,
        gateway,
        queue,
        authorize,
        responses,
        callback_view=deliveries.view if deliveries is not None else None,
    )
    add_submit_route(app, routes)
    add_task_routes(app, routes)
    if deliveries is not None:
        from forwarder.gateway.callbacks import add_redeliver_route

        add_redeliver_route(app, routes, deliveries)
    add_health_routes(app, broker_check)
    app.add_middleware(BodyLimits, max_body_bytes=gateway.max_body_bytes)
    add_metrics(app)  # outermost, so that a 413 from the body limits is counted too
    return app


def _listening_socket(host: str, port: int) -> socket.socket:
    bare = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0]
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


def run_gateway(settings: Settings) -> int:
    """Serve the gateway until SIGTERM or SIGINT; the exit code."""
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{INSTALL_HINT} ({exc.name} is missing)", name=exc.name
        ) from None
    gateway = settings.gateway
    sock = _listening_socket(gateway.host, gateway.port)
    host, port = sock.getsockname()[:2]
    app = create_app(settings)
    app.state.listen_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    config = uvicorn.Config(
        app,
        log_config=None,  # the process's logging, as configured by the CLI
        log_level=settings.worker.log_level.lower(),
        access_log=settings.worker.log_level == "DEBUG",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
