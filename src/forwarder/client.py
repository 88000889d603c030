"""Submit tasks and read results over the broker, speaking model-engine's wire protocol."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, states

from forwarder.brokers import celery_app
from forwarder.errors import TaskWaitTimeout
from forwarder.settings import Settings, load_settings
from forwarder.worker import LIRA_TASK_NAME

__all__ = ["ForwarderClient", "TaskResult"]


@dataclass(frozen=True)
class TaskResult:
    """A task's state as stored: ``result`` on success, ``error`` and ``traceback`` on failure."""

    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ready(self) -> bool:
        return self.status in states.READY_STATES

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


class ForwarderClient:
    """``submit(payload) -> task_id``, ``get(task_id)``, ``wait(task_id, timeout)``."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        # Without settings, the same sources as the CLI: environment, then defaults.
        self.settings = settings or load_settings()
        self.app = app or celery_app(self.settings, name="forwarder-client")

    def submit(
        self, payload: dict[str, Any], *, task_name: str = LIRA_TASK_NAME, queue: str | None = None
    ) -> str:
        # model-engine's gateway sends a naive local timestamp; so do we, so either side reads it.
        result = self.app.send_task(
            task_name,
            args=[payload, datetime.now()],
            queue=queue or self.settings.worker.queue,
        )
        return str(result.id)

    def get(self, task_id: str) -> TaskResult:
        meta = self._stored_meta(task_id)
        status = str(meta.get("status", states.PENDING))
        stored = meta.get("result")
        if status in states.EXCEPTION_STATES and isinstance(stored, dict):
            return TaskResult(
                task_id=task_id,
                status=status,
                error=_error_message(stored),
                traceback=meta.get("traceback"),
            )
        if status == states.SUCCESS:
            return TaskResult(task_id=task_id, status=status, result=stored)
        return TaskResult(task_id=task_id, status=status)

    def _stored_meta(self, task_id: str) -> dict[str, Any]:
        # Read the stored JSON as is: Celery's own reader rebuilds exception objects from it.
        backend = self.app.backend
        raw = backend.get(backend.get_key_for_task(task_id))
        meta = backend.decode(raw) if raw else None
        return meta if isinstance(meta, dict) else {"status": states.PENDING}

    def wait(self, task_id: str, timeout: float = 60.0, poll: float = 0.05) -> TaskResult:
        """Poll until the task is ready; raise ``TaskWaitTimeout`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        interval = poll
        while True:
            current = self.get(task_id)
            if current.ready:
                return current
            if time.monotonic() >= deadline:
                raise TaskWaitTimeout(f"task {task_id} still {current.status} after {timeout:g} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

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
