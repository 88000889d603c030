"""The gateway's routes: model-engine's async-task routes, and the health routes.

Calls into the broker block, so they run in worker threads, never on the event loop.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# at run time, and they name values local to the functions that add the routes (the authorizer).

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Response

from forwarder.client.broker import TaskResult
from forwarder.client.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKeyReused,
    IdempotencyStore,
    fingerprint,
    scoped_key,
    submit_once,
)
from forwarder.config.gateway import GatewaySettings
from forwarder.gateway.models import (
    TASK_ID_PATTERN,
    CreateAsyncTaskV1Response,
    ErrorResponse,
    GetAsyncTaskV1Response,
    SubmitAsyncTaskRequest,
    TaskStatus,
)

__all__ = [
    "READY_TIMEOUT_SECONDS",
    "TaskBroker",
    "TaskRoutes",
    "add_health_routes",
    "add_submit_route",
    "add_task_routes",
    "blocking",
    "task_view",
]

# The gateway's one logger, so that its lines keep one name whichever module writes them.
log = logging.getLogger("forwarder.gateway.app")

READY_TIMEOUT_SECONDS = 5.0
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
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, max_length=200)]


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


@dataclass(frozen=True)
class TaskRoutes:
    """What the task routes share: where tasks go, who may send them, what errors they show."""

    broker: TaskBroker
    store: IdempotencyStore
    gateway: GatewaySettings
    queue: str
    # The bearer-token check: the caller's principal ("" without authentication).
    authorize: Callable[..., str]
    responses: dict[int | str, dict[str, Any]]
    # A task's callback delivery state by task id (None: the GET shows none).
    callback_view: Callable[[str], Any] | None = None

    @property
    def dependencies(self) -> list[Any]:
        return [Depends(self.authorize)] if self.gateway.auth_tokens else []


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


async def blocking(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a worker thread; a failure of the broker or the store is a 503."""
    try:
        return await anyio.to_thread.run_sync(call, *args)
    except IdempotencyKeyReused:
        raise
    except Exception:
        log.exception("broker call %s failed", getattr(call, "__name__", call))
        raise HTTPException(
            status_code=503, detail="the broker or the result store did not answer"
        ) from None


def add_submit_route(app: FastAPI, routes: TaskRoutes) -> None:
    """``POST /v1/async-tasks``, honouring an ``Idempotency-Key`` header."""
    Principal = Annotated[str, Depends(routes.authorize)]
    broker, gateway, queue = routes.broker, routes.gateway, routes.queue

    @app.post(
        "/v1/async-tasks",
        response_model=CreateAsyncTaskV1Response,
        responses=routes.responses,
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
                submit_once, routes.store, key, request_fingerprint, retention, send
            )
        except IdempotencyKeyReused as exc:
            detail = [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "reused"}]
            raise HTTPException(status_code=422, detail=detail) from None
        if not sent:
            response.headers["Idempotent-Replayed"] = "true"
        return CreateAsyncTaskV1Response(task_id=task_id)


def add_task_routes(app: FastAPI, routes: TaskRoutes) -> None:
    """``GET /v1/async-tasks/{task_id}`` and ``POST /v1/async-tasks/{task_id}/cancel``."""
    for method, path, name, summary, call, callback_view in (
        (
            "GET",
            "/v1/async-tasks/{task_id}",
            "get_async_task",
            "A task's state and result",
            routes.broker.get,
            routes.callback_view,
        ),
        (
            "POST",
            "/v1/async-tasks/{task_id}/cancel",
            "cancel_async_task",
            "Cancel a task: a queued one never runs, a running one is abandoned",
            routes.broker.cancel,
            None,
        ),
    ):
        app.add_api_route(
            path,
            _task_endpoint(call, callback_view),
            methods=[method],
            name=name,
            response_model=GetAsyncTaskV1Response,
            responses=routes.responses,
            tags=["async tasks"],
            summary=summary,
            dependencies=routes.dependencies,
        )


def _task_endpoint(
    call: Callable[[str], TaskResult], callback_view: Callable[[str], Any] | None
) -> Callable[..., Any]:
    """A route answering with what ``call(task_id)`` says of the task (and of its callback)."""

    async def endpoint(task_id: TaskId) -> GetAsyncTaskV1Response:
        view = task_view(await blocking(call, task_id))
        if callback_view is not None:
            view.callback = await blocking(callback_view, task_id)
        return view

    return endpoint


def add_health_routes(app: FastAPI, check_broker: Callable[[], None]) -> None:
    """``/healthz`` (the gateway is up) and ``/readyz`` (``check_broker`` returns in time)."""

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
