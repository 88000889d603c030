"""What every forwarder result backend adds to Celery's: the ``custom`` error payload, the keys
beside the results, a delivery's admission and the stopped states.

The worker and the client ask a backend only through these methods (and Celery's public ones):
which backend it is never matters to them. The key/value implementation here serves every
backend (file, S3) as it is; the Redis backend replaces ``_read_admission`` with one script.

A cancel and an admission may race: the worker reads no marker, the client puts its marker down,
reads PENDING and stores CANCELED, and the worker's STARTED would then land over it. So STARTED
and a cancel's CANCELED are both stored by ``_set_if_unchanged``, a compare-and-set on the stored
value: each is written only over what its writer read, and the loser reads again (STARTED finds
CANCELED and the task ends there; CANCELED finds STARTED and leaves it to the worker's watcher).
The file backend compares under a lock; S3 with a conditional put (``If-Match`` the ETag read,
or ``If-None-Match: *``); on Redis the admission script reads the marker and stores STARTED
atomically, so the plain read-then-set here is enough.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, replace
from typing import Any

from celery import states
from celery.exceptions import BackendStoreError

from forwarder.protocol import CANCELED, COMPLETED_STATES, cancel_key_name, deliveries_key_name

__all__ = [
    "Admission",
    "ErrorPayloadMixin",
    "ForwarderBackendMixin",
    "StartingTask",
    "error_payload",
]

# Compare-and-set rounds before giving up: only a cancel and an admission write the same result
# at once, so a second round always settles it.
SET_ATTEMPTS = 5


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
            started = self._store_started(task_id, starting)
            admission = replace(admission, started_stored=started, canceled=not started)
        return admission

    def cancel_unless_running(self: Any, task_id: str, error: Any, not_running: Any) -> None:
        """Store ``error`` (CANCELED) if the stored state is one of ``not_running``, atomically."""
        value = self.encoded_meta(task_id, self.prepare_exception(error), error.state)
        for _ in range(SET_ATTEMPTS):
            current = self.get(self.get_key_for_task(task_id))
            if self._stored_status(current) not in not_running:
                return
            if self._set_if_unchanged(self.get_key_for_task(task_id), current, value):
                return
        raise BackendStoreError(
            "the stored state kept changing", state=error.state, task_id=task_id
        )

    def _store_started(self: Any, task_id: str, starting: StartingTask) -> bool:
        """Store STARTED unless CANCELED is stored; False when it is."""
        key = self.get_key_for_task(task_id)
        value = self.encoded_meta(
            task_id, starting.result, states.STARTED, request=starting.request
        )
        for _ in range(SET_ATTEMPTS):
            current = self.get(key)
            status = self._stored_status(current)
            if status == CANCELED:
                return False
            # As Celery's own store: a SUCCESS is never overwritten (a duplicate delivery).
            if status == states.SUCCESS or self._set_if_unchanged(key, current, value):
                return True
        raise BackendStoreError(
            "the stored state kept changing", state=states.STARTED, task_id=task_id
        )

    def encoded_meta(
        self: Any, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None
    ) -> Any:
        """The value Celery would store for this state, encoded."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id
        return self.encode(meta)

    def _stored_status(self: Any, raw: Any) -> str:
        return self._status(raw) or str(states.PENDING)

    def _set_if_unchanged(self: Any, key: Any, expected: Any, value: Any) -> bool:
        """Set ``key`` to ``value`` if it still holds ``expected`` (None: absent); True if set.

        Not atomic here: a backend where a cancel can race an admission overrides it.
        """
        if self.get(key) != expected:
            return False
        self.set(key, value)
        return True

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
