"""Submit, read and cancel tasks over the broker, speaking model-engine's wire protocol.

A task's limits (``ttl_seconds``, ``timeout_seconds``) travel in its kwargs, the args staying
model-engine's ``[payload, arrival_timestamp]``; a task without limits is sent exactly as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, states

from forwarder.celery_ext.brokers import celery_app
from forwarder.config.settings import Settings, load_settings
from forwarder.errors import TaskCanceled, TaskWaitTimeout
from forwarder.events import Event, EventLog, event_log_for
from forwarder.events.follow import Follower
from forwarder.protocol import CANCELED, FINAL_STATES, LIRA_TASK_NAME, STOPPED_STATES
from forwarder.worker.admission import CANCELED_QUEUED
from forwarder.worker.limits import TaskLimits

__all__ = ["ForwarderClient", "TaskResult"]

# A task in these states is in no worker's hands: a cancel can store CANCELED at once.
_NOT_RUNNING = frozenset({states.PENDING, states.RETRY})
# How often a follower of an event log reads it again while nothing is new.
EVENTS_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class TaskResult:
    """A task's state as stored: ``result`` on success, ``error`` for every other final state.

    ``status`` is one of PENDING, STARTED, RETRY, SUCCESS, FAILURE, EXPIRED, TIMEOUT, CANCELED
    (Celery's REVOKED reads as CANCELED).
    """

    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    error_type: str | None = None  # the exception's class name, on FAILURE

    @property
    def ready(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def status_code(self) -> int | None:
        """The model server's HTTP status, when the result carries it (as model-engine's does)."""
        code = self.result.get("status_code") if isinstance(self.result, dict) else None
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "status_code": self.status_code,
        }


def wait_for_final(
    get: Callable[[str], TaskResult], task_id: str, timeout: float, poll: float
) -> TaskResult:
    """Poll ``get`` until the task is final, backing off to a second; ``TaskWaitTimeout`` after."""
    deadline = time.monotonic() + timeout
    interval = poll
    while True:
        current = get(task_id)
        if current.ready:
            return current
        if time.monotonic() >= deadline:
            raise TaskWaitTimeout(f"task {task_id} still {current.status} after {timeout:g} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


class ForwarderClient:
    """``submit(payload) -> task_id``, ``get``, ``wait`` and ``cancel`` by task id."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        # Without settings, the same sources as the CLI: environment, then defaults.
        self.settings = settings or load_settings()
        self.app = app or celery_app(self.settings, name="forwarder-client")

    def submit(
        self,
        payload: dict[str, Any],
        *,
        task_name: str = LIRA_TASK_NAME,
        queue: str | None = None,
        ttl_seconds: float | None = None,
        timeout_seconds: float | None = None,
        task_id: str | None = None,
    ) -> str:
        """Send a task; returns its id (``task_id`` when given).

        ``ttl_seconds``: not forwarded (EXPIRED) once it has waited that long since now.
        ``timeout_seconds``: its model call is abandoned (TIMEOUT) after that long.
        A limit that is not a positive number raises ``PayloadError`` here, before sending.
        """
        limits = TaskLimits.parse(
            ttl_seconds, timeout_seconds, time.time() if ttl_seconds is not None else None
        )
        # model-engine's gateway sends a naive local timestamp; so do we, so either side reads it.
        result = self.app.send_task(
            task_name,
            args=[payload, datetime.now()],
            kwargs=limits.as_kwargs(),
            queue=queue or self.settings.worker.queue,
            task_id=task_id,
        )
        return str(result.id)

    def get(self, task_id: str) -> TaskResult:
        meta = self._stored_meta(task_id)
        stored_status = str(meta.get("status", states.PENDING))
        # Celery's own revoke (by any other client) is a cancel too.
        status = CANCELED if stored_status == states.REVOKED else stored_status
        stored = meta.get("result")
        if status in states.EXCEPTION_STATES | STOPPED_STATES and isinstance(stored, dict):
            return TaskResult(
                task_id=task_id,
                status=status,
                error=_error_message(stored),
                traceback=meta.get("traceback"),
                error_type=str(stored["exc_type"]) if stored.get("exc_type") else None,
            )
        if status == states.SUCCESS:
            return TaskResult(task_id=task_id, status=status, result=stored)
        return TaskResult(task_id=task_id, status=status)

    def cancel(self, task_id: str) -> TaskResult:
        """Cancel a task; returns its state after the request. Idempotent.

        A task already final is left as it is. Otherwise a marker tells the workers: a task not
        yet running is stored CANCELED at once and is never forwarded; a running one has its
        model call abandoned by its worker within about a second, and ends CANCELED (returned
        STARTED until then).
        """
        current = self.get(task_id)
        if current.ready:
            return current
        backend = self.app.backend
        backend.set(
            backend.cancel_key(task_id),
            json.dumps({"task_id": task_id, "canceled_at": time.time()}),
        )
        # Read after the marker is down: a worker starting the task from now on sees the marker;
        # one that started before shows STARTED (here, or just after a CANCELED stored below
        # as it started), and its watcher ends the call.
        current = self.get(task_id)
        if current.status in _NOT_RUNNING:
            # Only over the state just read: a worker's STARTED landing meanwhile is kept.
            backend.cancel_unless_running(task_id, TaskCanceled(CANCELED_QUEUED), _NOT_RUNNING)
            current = self.get(task_id)
        return current

    def _stored_meta(self, task_id: str) -> dict[str, Any]:
        # Read the stored JSON as is: Celery's own reader rebuilds exception objects from it.
        backend = self.app.backend
        raw = backend.get(backend.get_key_for_task(task_id))
        meta = backend.decode(raw) if raw else None
        return meta if isinstance(meta, dict) else {"status": states.PENDING}

    def wait(self, task_id: str, timeout: float = 60.0, poll: float = 0.05) -> TaskResult:
        """Poll until the task is ready; raise ``TaskWaitTimeout`` after ``timeout`` seconds."""
        return wait_for_final(self.get, task_id, timeout, poll)

    def event_log(self) -> EventLog:
        """The event logs kept beside this client's result backend."""
        return event_log_for(self.app.backend, self.settings.worker.events_max_length)

    def events(
        self, task_id: str, after: str | None = None, *, timeout: float | None = None
    ) -> Iterator[Event]:
        """The task's event log from after the id ``after`` (all of it with None), live, until
        its final ``state`` event; ``TaskWaitTimeout`` if it has not ended within ``timeout``."""
        follower = Follower(self.event_log(), self.get, task_id, after)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not follower.done:
            events = follower.poll()
            yield from events
            if not events and not follower.done:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TaskWaitTimeout(f"task {task_id} did not end within {timeout:g} s")
                time.sleep(EVENTS_POLL_SECONDS)

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> ForwarderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _error_message(stored: dict[str, Any]) -> str:
    custom = stored.get("custom")
    if isinstance(custom, str):
        try:
            error = json.loads(custom).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, str):
            return error
    message = stored.get("exc_message")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    return f"{stored.get('exc_type', 'Error')}: {message}"
