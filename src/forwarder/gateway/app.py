"""HTTP API to submit, watch, cancel and expire async inference tasks (FastAPI under uvicorn).

Routes (model-engine's first, so its clients work unchanged):

    POST /v1/async-tasks                    EndpointPredictV1Request (+ ttl_seconds, timeout_seconds)
                                            -> {"task_id"}; Idempotency-Key header honoured
    GET  /v1/async-tasks/{task_id}          -> {"task_id", "status", "result", "traceback", "status_code"}
    POST /v1/async-tasks/{task_id}/cancel   -> the same shape; idempotent
    GET  /v1/async-tasks/{task_id}/events   -> text/event-stream of the task's event log
    POST /v1/async-tasks/{task_id}/callback/redeliver  -> a failed callback's delivery, again
    GET  /healthz, GET /readyz (the broker answers), /docs, /openapi.json

Tasks go out under the LIRA task name to the configured queue, through the same broker client as
``forwarder submit``. The routes are in ``forwarder.gateway.routes``; this module wires them to
the broker, the idempotency store, the owner records, the authentication and the body limits;
``forwarder.gateway.server`` serves them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from forwarder import __version__
from forwarder.client.broker import ForwarderClient
from forwarder.client.idempotency import IdempotencyStore, open_store
from forwarder.config.gateway import GatewaySettings
from forwarder.config.settings import Settings
from forwarder.hooks.url_policy import UrlPolicy

INSTALL_HINT = "the gateway needs FastAPI and uvicorn: pip install 'inference-forwarder[gateway]'"
try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from forwarder.gateway.events import add_events_route
    from forwarder.gateway.http import Authentication, BodyLimits, principal_dependency
    from forwarder.gateway.metrics import add_metrics
    from forwarder.gateway.models import ErrorResponse
    from forwarder.gateway.owners import BackendOwners, TaskOwners
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

__all__ = ["create_app"]

log = logging.getLogger("forwarder.gateway.app")

_ERRORS = (
    (400, "A callback_url the worker would not call; detail says why"),
    (413, "Body larger than max_body_bytes"),
    (415, "Body not JSON"),
    (408, "Body not received within body_timeout_seconds"),
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


DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def _public_paths(gateway: GatewaySettings) -> set[str]:
    """The paths served without a token: health, and docs and metrics unless set otherwise."""
    public = {"/healthz", "/readyz"}
    if gateway.docs_access == "public":
        public.update(DOCS_PATHS)
    if gateway.metrics_access == "public":
        public.add("/metrics")
    return public


def _owners_of(client: TaskBroker, owners: TaskOwners | None) -> TaskOwners:
    if owners is not None:
        return owners
    if not isinstance(client, ForwarderClient):
        raise TypeError("create_app: owners are needed with a client of another kind")
    return BackendOwners(client.app.backend)


def _new_app(
    gateway: GatewaySettings, broker: TaskBroker, store: IdempotencyStore, queue: str
) -> FastAPI:
    """The FastAPI app with its docs where ``docs_access`` allows, closing what it holds at exit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = getattr(app.state, "listen_url", None)
        log.info("gateway listening on %s (queue %s)", url or "(ASGI)", queue)
        try:
            yield
        finally:
            broker.close()
            store.close()

    docs = gateway.docs_access != "disabled"
    app = FastAPI(
        title="inference-forwarder gateway",
        version=__version__,
        description="Submit, watch and cancel async inference tasks (model-engine compatible).",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    return app


def create_app(
    settings: Settings,
    client: TaskBroker | None = None,
    *,
    idempotency: IdempotencyStore | None = None,
    owners: TaskOwners | None = None,
    broker_check: Callable[[], None] | None = None,
) -> FastAPI:
    """The gateway's ASGI app; without ``client``, a ``ForwarderClient`` on ``settings``.

    ``broker_check`` (raising when the broker does not answer) backs ``/readyz``; it and
    ``owners`` (who submitted each task) are needed with a ``client`` that is not a
    ``ForwarderClient``.
    """
    if client is None:
        client = ForwarderClient(settings)
    if broker_check is None:
        if not isinstance(client, ForwarderClient):
            raise TypeError("create_app: broker_check is needed with a client of another kind")
        broker_check = _broker_reachable(client)
    broker: TaskBroker = client
    task_owners = _owners_of(client, owners)
    store = idempotency if idempotency is not None else open_store(settings)
    gateway = settings.gateway
    queue = settings.worker.queue

    app = _new_app(gateway, broker, store, queue)
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS
    }
    if gateway.auth_tokens:
        responses[401] = {"model": ErrorResponse, "description": "No token, or not an accepted one"}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    routes = TaskRoutes(
        broker,
        store,
        task_owners,
        gateway,
        queue,
        principal_dependency(bool(gateway.auth_tokens)),
        responses,
        UrlPolicy.from_settings(settings.hooks.callback),
    )
    _add_task_routes(app, routes, settings, client)
    add_health_routes(app, broker_check)
    _add_edges(app, gateway)
    return app


def _add_task_routes(
    app: FastAPI, routes: TaskRoutes, settings: Settings, client: TaskBroker
) -> None:
    """Submit, GET and cancel; with a ``ForwarderClient``, events and callback redelivery too."""
    deliveries = None
    if isinstance(client, ForwarderClient):
        from forwarder.gateway.callbacks import CallbackDeliveries

        deliveries = CallbackDeliveries(settings, client.app)
        routes = replace(routes, callback_view=deliveries.view)
    add_submit_route(app, routes)
    add_task_routes(app, routes)
    if isinstance(client, ForwarderClient):
        add_events_route(app, routes, client.event_log)
    if deliveries is not None:
        from forwarder.gateway.callbacks import add_redeliver_route

        add_redeliver_route(app, routes, deliveries)


def _add_edges(app: FastAPI, gateway: GatewaySettings) -> None:
    """The middleware, innermost first: body limits, then the token (checked before the body is
    read), then the Host header, then the metrics around them all (so that a 401 is counted)."""
    app.add_middleware(
        BodyLimits,
        max_body_bytes=gateway.max_body_bytes,
        timeout_seconds=gateway.body_timeout_seconds,
    )
    app.add_middleware(
        Authentication, tokens=gateway.auth_tokens, public_paths=_public_paths(gateway)
    )
    if gateway.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(gateway.trusted_hosts))
    served_here = gateway.metrics_access != "disabled" and gateway.metrics_port is None
    app.state.metrics_registry = add_metrics(app, route=served_here)
