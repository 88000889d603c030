"""What every forwarder result backend adds to Celery's: the ``custom`` error payload, the keys
beside the results, a delivery's admission and the stopped states.

The worker and the client ask a backend only through these methods (and Celery's public ones):
which backend it is never matters to them. The key/value implementation here serves every
backend (file, S3) as it is; the Redis backend replaces ``_read_admission`` with one script.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, replace
from typing import Any

from celery import states

from forwarder.protocol import COMPLETED_STATES, cancel_key_name, deliveries_key_name

__all__ = [
    "Admission",
    "ErrorPayloadMixin",
    "ForwarderBackendMixin",
    "StartingTask",
    "error_payload",
]


def error_payload(exc: BaseException) -> dict[str, str]:
    """model-engine's error body: the message, and the stack trace behind "Internal failure"."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": str(exc), "error_metadata": f"Internal failure\n{stack}"}


class ErrorPayloadMixin:
    """Stores ``custom`` beside Celery's ``exc_type`` / ``exc_message`` in the same write.

    Writing it in the one store of the failure (rather than updating the state afterwards) means
    a reader never sees a FAILURE without its ``custom`` field.
    """

    def prepare_exception(self, exc: BaseException, serializer: str | None = None) -> Any:
        prepared = super().prepare_exception(exc, serializer)  # type: ignore[misc]
        if isinstance(prepared, dict):
            prepared["custom"] = json.dumps(error_payload(exc))
        return prepared


@dataclass(frozen=True)
class StartingTask:
    """What a delivery that may start stores as STARTED, and how many deliveries are allowed."""

    result: dict[str, Any]
    request: Any
    max_deliveries: int


@dataclass(frozen=True)
class Admission:
    canceled: bool
    deliveries: int  # this one included (0 for a completed task: not counted)
    started_stored: bool = False  # the task may start, and STARTED is stored
    # The completed state (``protocol.COMPLETED_STATES``) an earlier delivery stored, if any: this
    # one is a redelivery of finished work, and nothing more is read, counted or stored for it.
    completed: str | None = None

    def may_start(self, max_deliveries: int) -> bool:
        return self.completed is None and not self.canceled and self.deliveries <= max_deliveries


class ForwarderBackendMixin(ErrorPayloadMixin):
    """A result backend as the worker and the client use it (mixed into Celery's backends)."""

    def cancel_key(self: Any, task_id: str) -> Any:
        """The cancel marker's key, typed as the backend types its keys (the file backend's are
        bytes)."""
        return self.key_t(cancel_key_name(task_id))

    def deliveries_key(self: Any, task_id: str, retries: int) -> Any:
        return self.key_t(deliveries_key_name(task_id, retries))

    def canceled(self: Any, task_ids: list[str]) -> list[bool]:
        """Which of these tasks a client has canceled: their markers, in one read."""
        markers = self.mget([self.cancel_key(task_id) for task_id in task_ids])
        return [marker is not None for marker in markers]

    def store_stopped(self: Any, task_id: str, error: Any, request: Any = None) -> None:
        """Store ``error.state`` with the fields a FAILURE has, so any reader finds its message."""
        self.store_result(task_id, self.prepare_exception(error), error.state, request=request)

    def admit(self: Any, task_id: str, retries: int, starting: StartingTask | None) -> Admission:
        """Read the stored state and the cancel marker, count this delivery, and store STARTED if
        the task may start. A task whose result is completed already answers that alone.

        ``starting`` is None for a task that may not start whatever the marker says (it expired).
        Retried like Celery's own result stores (``result_backend_always_retry``): a backend that
        restarts must not fail the task before it has even reached the model server.
        """
        admission: Admission = self._ensure_retryable(
            self._read_admission, task_id, retries, starting
        )
        if (
            starting is not None
            and admission.may_start(starting.max_deliveries)
            and not admission.started_stored
        ):
            self.store_result(task_id, starting.result, states.STARTED, request=starting.request)
            admission = replace(admission, started_stored=True)
        return admission

    def _read_admission(
        self: Any, task_id: str, retries: int, starting: StartingTask | None
    ) -> Admission:
        # The result, the marker and the count in one mget, the count written back: not atomic,
        # which is harmless here because a task is redelivered only once the worker that had it
        # has gone.
        count_key = self.deliveries_key(task_id, retries)
        keys = [self.get_key_for_task(task_id), self.cancel_key(task_id), count_key]
        result, marker, stored = list(self.mget(keys))
        completed = self._status(result)
        if completed in COMPLETED_STATES:
            return Admission(False, 0, completed=completed)
        deliveries = _count(stored) + 1
        self.set(count_key, str(deliveries))
        return Admission(marker is not None, deliveries)

    def _status(self: Any, raw: Any) -> str | None:
        """The status of a stored result as it is (no exception rebuilt), None if unreadable."""
        if raw is None:
            return None
        try:
            meta = self.decode(raw)
        except Exception:  # whatever another writer left there: not a result of ours
            return None
        status = meta.get("status") if isinstance(meta, dict) else None
        return status if isinstance(status, str) else None


def _count(stored: Any) -> int:
    try:
        return max(0, int(stored))
    except (TypeError, ValueError):
        return 0
