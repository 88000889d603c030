"""The gateway's routes: model-engine's async-task routes, and the health routes.

Calls into the broker block, so they run in worker threads, never on the event loop. Every route
under ``/v1/async-tasks/{task_id}`` is on ``TaskRoutes.task_router``, whose ``owned_task``
dependency answers 404 unless the caller submitted that task: a route added there is isolated
without asking.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# at run time, and they name values local to the functions that add the routes (the principal).

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Protocol

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Response

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
from forwarder.errors import CallbackRefused
from forwarder.gateway.models import (
    TASK_ID_PATTERN,
    CreateAsyncTaskV1Response,
    ErrorResponse,
    GetAsyncTaskV1Response,
    SubmitAsyncTaskRequest,
    TaskStatus,
)
from forwarder.gateway.owners import ANONYMOUS, TaskOwners, is_owner
from forwarder.hooks.url_policy import UrlPolicy

__all__ = [
    "READY_TIMEOUT_SECONDS",
    "TaskBroker",
    "TaskRoutes",
    "add_health_routes",
    "add_submit_route",
    "add_task_routes",
    "blocking",
    "include_task_router",
    "task_view",
]

UNKNOWN_TASK = "no task with this id"

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
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")
_ADDRESS = re.compile(
    r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\[[0-9a-fA-F:]*:[0-9a-fA-F:.]*\](?::\d+)?"
)


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
    """What the task routes share: where tasks go, who sent them, what errors they show."""

    broker: TaskBroker
    store: IdempotencyStore
    owners: TaskOwners
    gateway: GatewaySettings
    queue: str
    # The caller's principal, as the Authentication middleware found it.
    principal: Callable[..., str]
    responses: dict[int | str, dict[str, Any]]
    # The worker's callback rules: a callback_url it would refuse is refused at submit already.
    callback_urls: UrlPolicy = field(default_factory=UrlPolicy)
    # A task's callback delivery state by task id (None: the GET shows none).
    callback_view: Callable[[str], Any] | None = None

    @cached_property
    def owned_task(self) -> Callable[..., Any]:
        """A dependency returning the path's ``task_id`` if the caller submitted it; else 404.

        The same answer for a task of another caller and for an id never issued, so that a
        caller learns nothing of the others' tasks.
        """
        owners = self.owners
        Principal = Annotated[str, Depends(self.principal)]

        async def owned_task(task_id: TaskId, principal: Principal) -> str:
            if not is_owner(await blocking(owners.owner, task_id), principal):
                raise HTTPException(status_code=404, detail=UNKNOWN_TASK)
            return task_id

        return owned_task  # one callable, so FastAPI runs it once per request however named

    def task_router(self) -> APIRouter:
        """A router for ``/v1/async-tasks/{task_id}...`` routes, each owner-checked; add its
        routes with ``include_task_router``."""
        responses = {
            **self.responses,
            404: {"model": ErrorResponse, "description": "No task of this caller has this id"},
        }
        return APIRouter(
            prefix="/v1/async-tasks/{task_id}",
            dependencies=[Depends(self.owned_task)],
            responses=responses,
            tags=["async tasks"],
        )


def _error_text(task: TaskResult) -> str | None:
    """The error's type and message, as a client may be shown them: URLs and IP addresses in
    the message (the model server's, a store's) replaced, as they say where the internals are."""
    text = task.error
    if text and task.error_type and not text.startswith(f"{task.error_type}:"):
        text = f"{task.error_type}: {text}"
    if text:
        text = _ADDRESS.sub("<address>", _URL.sub("<url>", text))
    return text


def task_view(task: TaskResult, *, expose_tracebacks: bool = False) -> GetAsyncTaskV1Response:
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
    if status is TaskStatus.FAILURE:
        # A stack trace names files, hosts and internals: only when the operator asks for it.
        shown = (task.traceback if expose_tracebacks else None) or _error_text(task)
        return GetAsyncTaskV1Response(task_id=task.task_id, status=status, traceback=shown)
    if status in _ENDED_WITHOUT_RESULT:
        return GetAsyncTaskV1Response(task_id=task.task_id, status=status, traceback=task.error)
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
    Principal = Annotated[str, Depends(routes.principal)]
    broker, owners, gateway, queue = routes.broker, routes.owners, routes.gateway, routes.queue

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
        if body.callback_url:
            try:
                routes.callback_urls.check(body.callback_url)
            except CallbackRefused as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
        payload = body.payload()
        ttl = body.ttl_seconds or gateway.default_ttl_seconds
        timeout = body.timeout_seconds or gateway.default_timeout_seconds

        def send(task_id: str) -> str:
            # Recorded first: the task is never readable by its id before its owner is known.
            owners.record(task_id, principal)
            return broker.submit(
                payload, queue=queue, ttl_seconds=ttl, timeout_seconds=timeout, task_id=task_id
            )

        if idempotency_key is None:
            return CreateAsyncTaskV1Response(task_id=await blocking(send, str(uuid.uuid4())))
        task_id, sent = await _submit_once(routes, body, idempotency_key, principal, send)
        if not sent:
            response.headers["Idempotent-Replayed"] = "true"
        return CreateAsyncTaskV1Response(task_id=task_id)


async def _submit_once(
    routes: TaskRoutes,
    body: SubmitAsyncTaskRequest,
    idempotency_key: str,
    principal: str,
    send: Callable[[str], str],
) -> tuple[str, bool]:
    """The task id for ``idempotency_key``, and whether this request sent it (422 on reuse)."""
    gateway = routes.gateway
    # Anonymous callers share the CLI's scope (no principal), so both find the same key.
    key = scoped_key(idempotency_key, "" if principal == ANONYMOUS else principal)
    # What the client sent, as ``forwarder submit`` fingerprints it: either way, one request.
    request_fingerprint = fingerprint(body.model_dump(mode="json", exclude_unset=True))
    try:
        sent: tuple[str, bool] = await blocking(
            submit_once,
            routes.store,
            key,
            request_fingerprint,
            gateway.idempotency_retention_seconds,
            send,
            gateway.idempotency_lease_seconds,
        )
    except IdempotencyKeyReused as exc:
        detail = [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "reused"}]
        raise HTTPException(status_code=422, detail=detail) from None
    return sent


def add_task_routes(app: FastAPI, routes: TaskRoutes) -> None:
    """``GET /v1/async-tasks/{task_id}`` and ``POST /v1/async-tasks/{task_id}/cancel``."""
    router = routes.task_router()
    OwnedTask = Annotated[str, Depends(routes.owned_task)]
    expose = routes.gateway.expose_tracebacks
    broker, callback_view = routes.broker, routes.callback_view

    @router.get("", response_model=GetAsyncTaskV1Response, summary="A task's state and result")
    async def get_async_task(task_id: OwnedTask) -> GetAsyncTaskV1Response:
        view = task_view(await blocking(broker.get, task_id), expose_tracebacks=expose)
        if callback_view is not None:
            view.callback = await blocking(callback_view, task_id)
        return view

    @router.post(
        "/cancel",
        response_model=GetAsyncTaskV1Response,
        summary="Cancel a task: a queued one never runs, a running one is abandoned",
    )
    async def cancel_async_task(task_id: OwnedTask) -> GetAsyncTaskV1Response:
        return task_view(await blocking(broker.cancel, task_id), expose_tracebacks=expose)

    include_task_router(app, router)


def include_task_router(app: FastAPI, router: APIRouter) -> None:
    """Add the routes of a ``TaskRoutes.task_router()`` to ``app``, each owner-checked.

    Added as they are (each already carries the router's dependency and responses) rather than
    included: an included router hides its routes' templates from the metrics' route label.
    """
    app.router.routes.extend(router.routes)


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
