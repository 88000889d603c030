"""A running model call's bounds: its deadline, and its cancel by a client.

A client cancels a task by storing a marker (``forwarder-cancel-<task id>``) through the result
backend's key/value store, expiring with the results where the backend expires them, and, for a
task not yet running, the visible state CANCELED. The marker stays where the worker writes
nothing, so a state the worker writes over (STARTED) cannot undo the cancel. A queued task reads
its marker at admission; while model calls run, one watcher per process reads the markers of all
of them in one read every ``WATCH_INTERVAL`` and interrupts the canceled ones (see
``forwarder.worker.interrupts``); idle, it waits without cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from forwarder.errors import TaskCanceled, TaskDeadlineExceeded, TaskStopped
from forwarder.process_local import ProcessLocal
from forwarder.protocol import TIMEOUT_KWARG
from forwarder.worker.interrupts import Call, Interrupt, Interrupter
from forwarder.worker.limits import TaskLimits

__all__ = ["CANCELED_RUNNING", "WATCH_INTERVAL", "CancelWatch", "Watcher"]

log = logging.getLogger(__name__)

# How soon a running task's cancel takes effect, against one marker read per in-flight task.
WATCH_INTERVAL = 0.5

CANCELED_RUNNING = "canceled during its model call; the call was abandoned"


class Watcher:
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
            canceled = self.backend().canceled([call.task_id for call in calls])
        except Exception as exc:
            # Logged once per outage: the next poll tries again.
            if not self._failing:
                log.warning("cannot read cancel markers: %s: %s", type(exc).__name__, exc)
            self._failing = True
            return
        self._failing = False
        for call, is_canceled in zip(calls, canceled, strict=True):
            if is_canceled:
                self.interrupter.interrupt(call, TaskCanceled)


class CancelWatch:
    """Runs model calls bounded by their deadline and their cancel, one watcher per process."""

    def __init__(self, backend: Callable[[], Any], interrupter: Callable[[], Interrupter]) -> None:
        # A prefork child inherits its parent's watcher through fork: each process builds its own.
        self._watcher = ProcessLocal(lambda: Watcher(backend, interrupter()))

    def watcher(self) -> Watcher:
        return self._watcher.get()

    @contextmanager
    def guard(self, task_id: str, limits: TaskLimits) -> Iterator[None]:
        """Run the body as ``task_id``'s model call; past its deadline or once canceled, the call
        is abandoned and ``TaskStopped`` raised in its place."""
        watcher = self.watcher()
        call = watcher.interrupter.arm(task_id, limits.timeout_seconds)
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
            raise _stopped(interrupt, limits) from None


def _stopped(interrupt: Interrupt, limits: TaskLimits) -> TaskStopped:
    if interrupt.reason is TaskDeadlineExceeded:
        return TaskDeadlineExceeded(
            f"the model call took longer than its {TIMEOUT_KWARG}="
            f"{limits.timeout_seconds:g}; the call was abandoned"
        )
    return interrupt.reason(CANCELED_RUNNING)
