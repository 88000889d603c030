"""HTTP API to submit, watch, cancel and expire async inference tasks (FastAPI under uvicorn).

Routes (model-engine's first, so its clients work unchanged):

    POST /v1/async-tasks                    EndpointPredictV1Request (+ ttl_seconds, timeout_seconds)
                                            -> {"task_id"}; Idempotency-Key header honoured
    GET  /v1/async-tasks/{task_id}          -> {"task_id", "status", "result", "traceback", "status_code"}
    POST /v1/async-tasks/{task_id}/cancel   -> the same shape; idempotent
    GET  /healthz, GET /readyz (the broker answers), /docs, /openapi.json

Tasks go out under the LIRA task name to the configured queue, through the same broker client as
``forwarder submit``. Calls into it block, so they run in worker threads, never on the event loop.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# at run time, and they name values local to ``create_app`` (its dependencies).

import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

from forwarder import __version__
from forwarder.client.broker import ForwarderClient, TaskResult
from forwarder.client.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKeyReused,
    IdempotencyStore,
    fingerprint,
    open_store,
    scoped_key,
    submit_once,
)
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError

INSTALL_HINT = "the gateway needs FastAPI and uvicorn: pip install 'inference-forwarder[gateway]'"
try:
    import anyio
    from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from forwarder.gateway.http import BodyLimits, authorizer
    from forwarder.gateway.metrics import add_metrics
    from forwarder.gateway.models import (
        TASK_ID_PATTERN,
        CreateAsyncTaskV1Response,
        ErrorResponse,
        GetAsyncTaskV1Response,
        SubmitAsyncTaskRequest,
        TaskStatus,
    )
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"{INSTALL_HINT} ({exc.name} is missing)", name=exc.name) from None

__all__ = ["TaskBroker", "create_app", "run_gateway", "task_view"]

log = logging.getLogger("forwarder.gateway.app")

READY_TIMEOUT_SECONDS = 5.0
LISTEN_BACKLOG = 2048  # uvicorn's default
# Printable ASCII, no leading or trailing space: what a header carries unchanged.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
# Celery's states the way model-engine's gateway reports them; REVOKED is Celery's own cancel.
_STATUS_ALIASES = {"RETRY": TaskStatus.PENDING, "REVOKED": TaskStatus.CANCELED}
_ENDED_WITHOUT_RESULT = {
    TaskStatus.FAILURE,
    TaskStatus.EXPIRED,
    TaskStatus.TIMEOUT,
    TaskStatus.CANCELED,
}


class TaskBroker(Protocol):
    """What the gateway needs of ``ForwarderClient``."""

    def submit(
        self,
        payload: dict[str, Any],
        *,
        queue: str | None = None,
        ttl_seconds: float | None = None,
        timeout_seconds: float | None = None,
        task_id: str | None = None,
    ) -> str: ...

    def get(self, task_id: str) -> TaskResult: ...

    def cancel(self, task_id: str) -> TaskResult: ...

    def close(self) -> None: ...


def task_view(task: TaskResult) -> GetAsyncTaskV1Response:
    """model-engine's response for a stored task: ``status_code`` lifted out of the result."""
    status = _STATUS_ALIASES.get(task.status)
    if status is None:
        try:
            status = TaskStatus(task.status)
        except ValueError:
            status = TaskStatus.UNDEFINED
    if status is TaskStatus.SUCCESS:
        result, status_code = task.result, None
        if isinstance(result, dict) and "status_code" in result:
            result = dict(result)
            code = result.pop("status_code")
            status_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        return GetAsyncTaskV1Response(
            task_id=task.task_id, status=status, result=result, status_code=status_code
        )
    if status in _ENDED_WITHOUT_RESULT:
        return GetAsyncTaskV1Response(
            task_id=task.task_id, status=status, traceback=task.traceback or task.error
        )
    return GetAsyncTaskV1Response(task_id=task.task_id, status=status)


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
    check_broker = broker_check
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
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in (
            (413, "Body larger than max_body_bytes"),
            (415, "Body not JSON"),
            (422, "A field, parameter or header not allowed; loc names it"),
            (503, "The broker or the result store did not answer"),
        )
    }
    dependencies = []
    if gateway.auth_tokens:
        authorize = authorizer(gateway.auth_tokens)
        dependencies = [Depends(authorize)]
        errors[401] = {"model": ErrorResponse, "description": "No token, or not an accepted one"}
    else:

        def authorize() -> str:
            return ""

    Principal = Annotated[str, Depends(authorize)]
    TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, max_length=200)]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    async def blocking(call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(call, *args)
        except IdempotencyKeyReused:
            raise
        except Exception:
            log.exception("broker call %s failed", getattr(call, "__name__", call))
            raise HTTPException(
                status_code=503, detail="the broker or the result store did not answer"
            ) from None

    @app.post(
        "/v1/async-tasks",
        response_model=CreateAsyncTaskV1Response,
        responses=errors,
        tags=["async tasks"],
        summary="Submit a task",
    )
    async def create_async_task(
        body: SubmitAsyncTaskRequest,
        response: Response,
        principal: Principal,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                max_length=MAX_KEY_LENGTH,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="The same key within idempotency_retention_seconds returns the "
                "same task_id instead of queuing again",
            ),
        ] = None,
        model_endpoint_id: Annotated[
            str | None,
            Query(description="Accepted from model-engine clients; one queue is served"),
        ] = None,
    ) -> CreateAsyncTaskV1Response:
        payload = body.payload()
        ttl = body.ttl_seconds or gateway.default_ttl_seconds
        timeout = body.timeout_seconds or gateway.default_timeout_seconds

        def send(task_id: str) -> str:
            return broker.submit(
                payload, queue=queue, ttl_seconds=ttl, timeout_seconds=timeout, task_id=task_id
            )

        if idempotency_key is None:
            return CreateAsyncTaskV1Response(task_id=await blocking(send, str(uuid.uuid4())))
        key = scoped_key(idempotency_key, principal)
        # What the client sent, as ``forwarder submit`` fingerprints it: either way, one request.
        request_fingerprint = fingerprint(body.model_dump(mode="json", exclude_unset=True))
        retention = gateway.idempotency_retention_seconds
        try:
            task_id, sent = await blocking(
                submit_once, store, key, request_fingerprint, retention, send
            )
        except IdempotencyKeyReused as exc:
            detail = [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "reused"}]
            raise HTTPException(status_code=422, detail=detail) from None
        if not sent:
            response.headers["Idempotent-Replayed"] = "true"
        return CreateAsyncTaskV1Response(task_id=task_id)

    @app.get(
        "/v1/async-tasks/{task_id}",
        response_model=GetAsyncTaskV1Response,
        responses=errors,
        tags=["async tasks"],
        summary="A task's state and result",
        dependencies=dependencies,
    )
    async def get_async_task(task_id: TaskId) -> GetAsyncTaskV1Response:
        return task_view(await blocking(broker.get, task_id))

    @app.post(
        "/v1/async-tasks/{task_id}/cancel",
        response_model=GetAsyncTaskV1Response,
        responses=errors,
        tags=["async tasks"],
        summary="Cancel a task: a queued one never runs, a running one is abandoned",
        dependencies=dependencies,
    )
    async def cancel_async_task(task_id: TaskId) -> GetAsyncTaskV1Response:
        return task_view(await blocking(broker.cancel, task_id))

    @app.get("/healthz", tags=["health"], summary="The gateway is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The broker answers",
        responses={503: {"model": ErrorResponse, "description": "The broker did not answer"}},
    )
    async def readyz(response: Response) -> dict[str, str]:
        try:
            with anyio.fail_after(READY_TIMEOUT_SECONDS + 1):
                await anyio.to_thread.run_sync(check_broker, abandon_on_cancel=True)
        except Exception as exc:
            log.warning("readiness: broker unreachable: %s", exc)
            response.status_code = 503
            return {"detail": "the broker did not answer"}
        return {"status": "ready"}

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
