"""A delivery's admission: whether it may go on to the model call, or ends here and how.

The result backend reads the stored state and the cancel marker and counts the delivery in one
call (one round trip on Redis, where STARTED is stored in it too); STARTED is stored only for a
task that goes on, so a queued task canceled by a client never shows STARTED. Then, in this order:

1. completed: an earlier delivery stored SUCCESS, FAILURE, EXPIRED or TIMEOUT (the worker was
   lost before its acknowledgement, or the same message was published twice): the message is
   acknowledged, and neither the model call nor the hooks run again;
2. canceled: a task a client canceled stays CANCELED, even once it has expired;
3. expired: its ``ttl_seconds`` passed in the queue;
4. crash-looping: delivered more than ``max_deliveries`` times without finishing (checked after
   the TTL: an expired task would only expire again if replayed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from forwarder.celery_ext.backends.base import StartingTask
from forwarder.errors import TaskCanceled, TaskStopped
from forwarder.worker.crash_loop import CrashLoopGuard
from forwarder.worker.limits import TaskLimits

__all__ = ["CANCELED_QUEUED", "Completed", "admit"]

CANCELED_QUEUED = "canceled before it started; not forwarded to the model server"


@dataclass(frozen=True)
class Completed:
    """A redelivery of a task an earlier delivery completed with ``state``: not run again."""

    state: str


def admit(
    task: Any, limits: TaskLimits, crash_loop: CrashLoopGuard
) -> TaskStopped | Completed | None:
    """None once the task is admitted (and stored STARTED); else how it ends here."""
    request = task.request
    expired = limits.expired(time.time())
    starting = StartingTask(
        {"pid": os.getpid(), "hostname": request.hostname}, request, crash_loop.max_deliveries
    )
    admission = task.backend.admit(
        request.id, request.retries or 0, starting if expired is None else None
    )
    if admission.completed is not None:
        return Completed(admission.completed)
    if admission.canceled:
        return TaskCanceled(CANCELED_QUEUED)
    if expired is not None:
        return expired
    return crash_loop.check(task, admission.deliveries)
