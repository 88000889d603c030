"""Celery's prefork pool, replacing a recycled child as soon as it has exited.

When a child exits (``CELERY_WORKER_MAX_TASKS_PER_CHILD``), Celery learns of it from the child's
sentinel pipe and reaps it at once; but the pipe can turn readable a moment before the child can
be reaped, and then the replacement waits for the pool's 5 s maintenance timer. With one slot,
every recycle stalled the worker for about 5 s (40 tasks with recycling every 2 took 71 s).
Retrying the reap shortly after, a few times, closes that gap.

A task whose arguments cannot be pickled for a child (a payload nested some 500 levels deep: JSON
decodes it, pickle hits the recursion limit) made ``apply_async`` raise in the worker's main
process, which Celery treats as unrecoverable: the whole worker stopped, and the redelivered
message stopped the next one too (found by tests/faults). That task now fails on its own, with
a readable error, and its half-registered job is dropped from the pool's bookkeeping.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

from forwarder.errors import PayloadError

__all__ = ["PreforkPool"]

log = logging.getLogger(__name__)

# Seconds after a child's exit is seen at which the pool reaps and replaces it again.
REAP_RETRY_DELAYS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class PromptAsynPool(AsynPool):  # type: ignore[misc]
    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        super()._event_process_exit(hub, proc)
        for delay in REAP_RETRY_DELAYS:
            hub.call_later(delay, self.maintain_pool)


class PreforkPool(TaskPool):  # type: ignore[misc]
    """Prefork, with exited children replaced within a second."""

    Pool = PromptAsynPool

    # Not on_apply: Celery's prefork pool replaces that with its pool's method once started.
    def apply_async(self, *args: Any, **options: Any) -> Any:
        try:
            return super().apply_async(*args, **options)
        except RecursionError as exc:
            error_callback = options.get("error_callback")
            if error_callback is None:
                raise
            task_id = options.get("correlation_id")
            self._forget(task_id)
            log.warning("task %s cannot be handed to a pool process: %s", task_id, exc)
            try:
                raise PayloadError(
                    "payload is nested too deeply to be handed to a worker process "
                    f"({exc}); flatten it"
                ) from None
            except PayloadError:
                error_callback(ExceptionInfo())
            return None

    def _forget(self, task_id: Any) -> None:
        """Drop the pool's record of a job never sent to a child, and free its slot.

        What billiard does when a job's result arrives: release the slot (the worker's
        semaphore), then drop the job; without the release, each such task cost a slot for good.
        """
        pool = self._pool
        cache = getattr(pool, "_cache", None) or {}
        for result in list(cache.values()):
            if getattr(result, "correlation_id", None) == task_id and not result.accepted():
                result.discard()
                putlock = getattr(pool, "_putlock", None)
                if putlock is not None:
                    putlock.release()
