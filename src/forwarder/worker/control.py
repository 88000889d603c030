"""A task's limits and its cancellation: queue TTL, execution deadline, cancel markers, states.

A client may send, in the task's kwargs (the args stay model-engine's ``[payload,
arrival_timestamp]``):

- ``ttl_seconds`` with ``submitted_at`` (UTC epoch seconds of the send): a task that has waited
  longer than that, counted from the send (retries included), is not forwarded; it ends
  ``EXPIRED``. Clocks are compared, so client and worker need synchronised clocks.
- ``timeout_seconds``: the whole model call, not each socket read, must end within it; past it
  the call is abandoned (the connection dropped) and the task ends ``TIMEOUT``.

A client cancels a task by storing a marker, ``forwarder-cancel-<task id>``, through the result
backend's key/value store (expiring with the results where the backend expires them), and, for a
task not yet running, the visible state ``CANCELED``. The marker stays where the worker writes
nothing, so a state the worker writes over (STARTED) cannot undo the cancel. The worker reads the
marker once before forwarding (the one extra round trip per task, which also counts the
delivery: see ``forwarder.worker.crash_loop``) and stores STARTED itself only after that, so a queued
task canceled by a client never shows STARTED. While model calls run, one watcher per process
reads the markers of all of them in one ``mget`` every ``WATCH_INTERVAL`` and interrupts the
canceled ones (see ``forwarder.worker.interrupts``); idle, it waits without cost.

``EXPIRED``, ``TIMEOUT`` and ``CANCELED`` are final: stored with the same fields as a FAILURE
(``exc_type``, ``exc_message``, ``custom``), the message acknowledged, never retried and never
delivered again; the hooks run for them as for any final state.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from celery import states
from celery.exceptions import Ignore

from forwarder.errors import (
    PayloadError,
    TaskCanceled,
    TaskDeadlineExceeded,
    TaskExpired,
    TaskStopped,
)
from forwarder.worker.crash_loop import CrashLoopGuard, StartingTask, read_admission
from forwarder.worker.interrupts import Call, Interrupt, Interrupter, interrupter_for

__all__ = [
    "CANCELED",
    "CANCEL_KEY_PREFIX",
    "EXPIRED",
    "FINAL_STATES",
    "STOPPED_STATES",
    "TIMEOUT",
    "WATCH_INTERVAL",
    "TaskControl",
    "TaskLimits",
    "cancel_key",
    "store_stopped",
]

log = logging.getLogger(__name__)

EXPIRED = TaskExpired.state
TIMEOUT = TaskDeadlineExceeded.state
CANCELED = TaskCanceled.state
STOPPED_STATES = frozenset({EXPIRED, TIMEOUT, CANCELED})
FINAL_STATES = frozenset({states.SUCCESS, states.FAILURE, *STOPPED_STATES})

CANCEL_KEY_PREFIX = "forwarder-cancel-"
# How soon a running task's cancel takes effect, against one marker read per in-flight task.
WATCH_INTERVAL = 0.5

TTL_KWARG = "ttl_seconds"
TIMEOUT_KWARG = "timeout_seconds"
SUBMITTED_KWARG = "submitted_at"

CANCELED_QUEUED = "canceled before it started; not forwarded to the model server"
CANCELED_RUNNING = "canceled during its model call; the call was abandoned"


def cancel_key(backend: Any, task_id: str) -> Any:
    """The marker's key, typed as the backend types its keys (the file backend's are bytes)."""
    return backend.key_t(f"{CANCEL_KEY_PREFIX}{task_id}")


def _number(value: Any, name: str, what: str, *, positive: bool) -> float | None:
    # type() rather than isinstance(): a bool is not a number of seconds.
    if value is None:
        return None
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise PayloadError(f"{name} must be {what}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TaskLimits:
    """The limits a client set on a task; ``None`` is no limit."""

    ttl_seconds: float | None = None
    timeout_seconds: float | None = None
    submitted_at: float | None = None  # UTC epoch seconds of the client's send

    @classmethod
    def parse(
        cls, ttl_seconds: Any = None, timeout_seconds: Any = None, submitted_at: Any = None
    ) -> TaskLimits:
        """Checked limits; ``PayloadError`` naming the value that is not allowed."""
        limits = cls(
            ttl_seconds=_number(
                ttl_seconds, TTL_KWARG, "a positive number of seconds", positive=True
            ),
            timeout_seconds=_number(
                timeout_seconds, TIMEOUT_KWARG, "a positive number of seconds", positive=True
            ),
            submitted_at=_number(
                submitted_at, SUBMITTED_KWARG, "a UTC epoch time in seconds", positive=False
            ),
        )
        if limits.ttl_seconds is not None and limits.submitted_at is None:
            raise PayloadError(
                f"{TTL_KWARG} needs {SUBMITTED_KWARG}, the UTC epoch time of the send in seconds"
            )
        return limits

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any]) -> TaskLimits:
        """Take the limits out of a task's kwargs, leaving the keys the worker does not know."""
        return cls.parse(
            kwargs.pop(TTL_KWARG, None),
            kwargs.pop(TIMEOUT_KWARG, None),
            kwargs.pop(SUBMITTED_KWARG, None),
        )

    def as_kwargs(self) -> dict[str, float]:
        values = {
            TTL_KWARG: self.ttl_seconds,
            TIMEOUT_KWARG: self.timeout_seconds,
            SUBMITTED_KWARG: self.submitted_at,
        }
        return {name: value for name, value in values.items() if value is not None}

    def expired(self, now: float) -> TaskExpired | None:
        if self.ttl_seconds is None or self.submitted_at is None:
            return None
        waited = now - self.submitted_at
        if waited <= self.ttl_seconds:
            return None
        return TaskExpired(
            f"waited {waited:.3f} s in the queue, longer than its {TTL_KWARG}={self.ttl_seconds:g}"
            "; not forwarded to the model server"
        )


def store_stopped(backend: Any, task_id: str, error: TaskStopped, request: Any = None) -> None:
    """Store ``error.state`` with the fields a FAILURE has, so any reader finds its message."""
    backend.store_result(task_id, backend.prepare_exception(error), error.state, request=request)


class _Watcher:
    """One per process: interrupts the armed calls whose task a client has canceled."""

    def __init__(self, backend: Callable[[], Any], interrupter: Interrupter) -> None:
        self.backend = backend
        self.interrupter = interrupter
        self._calls: set[Call] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, call: Call) -> None:
        with self._changed:
            self._calls.add(call)
            if self._thread is None:
                # Under gevent, threading is patched and this is a greenlet.
                self._thread = threading.Thread(
                    target=self._run, name="forwarder-cancel-watcher", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def release(self, call: Call) -> None:
        """Disarm and stop watching ``call``; done twice, the second time changes nothing."""
        self.interrupter.disarm(call)
        with self._changed:
            self._calls.discard(call)

    def _run(self) -> None:
        self.interrupter.prepare_watcher()
        while True:
            with self._changed:
                while not self._calls:
                    self._changed.wait()
            time.sleep(WATCH_INTERVAL)
            self.poll()

    def poll(self) -> None:
        with self._changed:
            calls = [call for call in self._calls if call.armed]
        if not calls:
            return
        try:
            backend = self.backend()
            markers = list(backend.mget([cancel_key(backend, call.task_id) for call in calls]))
        except Exception as exc:
            # Logged once per outage: the next poll tries again.
            if not self._failing:
                log.warning("cannot read cancel markers: %s: %s", type(exc).__name__, exc)
            self._failing = True
            return
        self._failing = False
        for call, marker in zip(calls, markers, strict=True):
            if marker is not None:
                self.interrupter.interrupt(call, TaskCanceled)


class TaskControl:
    """Admits a task past its cancel, TTL and delivery checks, then bounds and watches its call.

    ``on_stop(task, error)`` runs the hooks of a task that ends stopped: Celery runs none for it.
    """

    def __init__(
        self,
        pool: str,
        backend: Callable[[], Any],
        on_stop: Callable[[Any, TaskStopped], None],
        crash_loop: CrashLoopGuard,
    ) -> None:
        self.pool = pool
        self.backend = backend
        self.on_stop = on_stop
        self.crash_loop = crash_loop
        self._watcher: _Watcher | None = None
        self._watcher_pid = 0

    def watcher(self) -> _Watcher:
        # A prefork child inherits its parent's object through fork: each process builds its own.
        if self._watcher is None or self._watcher_pid != os.getpid():
            self._watcher = _Watcher(self.backend, interrupter_for(self.pool))
            self._watcher_pid = os.getpid()
        return self._watcher

    def admit(self, task: Any, limits: TaskLimits) -> None:
        """End the task (``Ignore``) if canceled, expired or crash-looping; else store STARTED."""
        request = task.request
        backend = task.backend
        # Retried like Celery's own result stores (result_backend_always_retry): a backend that
        # restarts must not fail the task before it has even reached the model server.
        expired = limits.expired(time.time())
        starting = StartingTask(
            {"pid": os.getpid(), "hostname": request.hostname},
            request,
            self.crash_loop.max_deliveries,
        )
        admission = backend._ensure_retryable(
            read_admission,
            backend,
            cancel_key(backend, request.id),
            request.id,
            request.retries or 0,
            starting if expired is None else None,
        )
        # The marker first: a task a client canceled stays CANCELED even once it has expired.
        if admission.canceled:
            self.stop(task, TaskCanceled(CANCELED_QUEUED))
        if expired is not None:
            self.stop(task, expired)
        # After the TTL: an expired task would only expire again if replayed.
        dead_lettered = self.crash_loop.check(task, admission.deliveries)
        if dead_lettered is not None:
            self.stop(task, dead_lettered)
        if not admission.started_stored:
            backend.store_result(request.id, starting.result, states.STARTED, request=request)

    @contextmanager
    def interruptible(self, task: Any, limits: TaskLimits) -> Iterator[None]:
        """Run the body as the task's model call: past its deadline or once canceled, it ends."""
        watcher = self.watcher()
        call = watcher.interrupter.arm(task.request.id, limits.timeout_seconds)
        try:
            try:
                watcher.add(call)
                yield
            finally:
                watcher.release(call)
        except Interrupt as interrupt:
            # Again: a signal arriving as the call ended may have cut the release above short;
            # nothing raises any more now that the call has raised once.
            watcher.release(call)
            if interrupt.reason is TaskDeadlineExceeded:
                error: TaskStopped = TaskDeadlineExceeded(
                    f"the model call took longer than its {TIMEOUT_KWARG}="
                    f"{limits.timeout_seconds:g}; the call was abandoned"
                )
            else:
                error = interrupt.reason(CANCELED_RUNNING)
            self.stop(task, error)

    def stop(self, task: Any, error: TaskStopped) -> NoReturn:
        """Store the final state, run the hooks, and have Celery acknowledge the message."""
        store_stopped(task.backend, task.request.id, error, task.request)
        log.info("task %s %s: %s", task.request.id, error.state, error)
        self.on_stop(task, error)
        # Ignore: acknowledged, not retried, and nothing stored over the state just written.
        raise Ignore()
