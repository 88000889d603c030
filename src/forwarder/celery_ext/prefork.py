"""Celery's prefork pool, replacing a recycled child as soon as it has exited.

When a child exits (``CELERY_WORKER_MAX_TASKS_PER_CHILD``), Celery learns of it from the child's
sentinel pipe and reaps it at once; but the pipe can turn readable a moment before the child can
be reaped, and then the replacement waits for the pool's 5 s maintenance timer. With one slot,
every recycle stalled the worker for about 5 s (40 tasks with recycling every 2 took 71 s).
Retrying the reap shortly after, a few times, closes that gap.

A warm shutdown (and a lost broker connection) drops the jobs no child has acknowledged yet,
since the broker delivers them again. A job already written to a live child is kept: the child
runs it anyway, and only a kept job has its result read and its message acked.

A task whose arguments cannot be pickled for a child (a payload nested some 500 levels deep: JSON
decodes it, pickle hits the recursion limit) made ``apply_async`` raise in the worker's main
process, which Celery treats as unrecoverable: the whole worker stopped, and the redelivered
message stopped the next one too (found by tests/faults). That task now fails on its own, with
a readable error, and its half-registered job is dropped from the pool's bookkeeping.

Without an event loop (the embedded broker's transport has none) Celery runs billiard's blocking
pool, whose children share one job pipe guarded by one lock, and billiard's idle child waits for
its next job inside that lock. A child killed with SIGKILL while idle took the lock with it: its
replacement and every other child waited on it for good, tasks stayed PENDING and a warm shutdown
hung on the same lock (Celery #2011, billiard #104). Here an idle child waits on the pipe alone
and takes the lock only to read a job already there, so killing it leaves the lock free. (The
event-loop pool gives each child pipes of its own, with no lock, and recreates a killed child's
pipes itself.)
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.pool import Pool as BlockingPool
from billiard.queues import SimpleQueue
from billiard.reduction import ForkingPickler
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

from forwarder.errors import PayloadError

__all__ = ["IdleSafeJobQueue", "PreforkPool"]

log = logging.getLogger(__name__)

# Seconds after a child's exit is seen at which the pool reaps and replaces it again.
REAP_RETRY_DELAYS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class PromptAsynPool(AsynPool):  # type: ignore[misc]
    def flush(self) -> None:
        # Celery drops every job no child has acknowledged yet, as the broker delivers it
        # again; but a job already written to a live child runs there all the same, and with it
        # dropped, its result was never read and its message never acked: a warm shutdown put
        # back tasks whose results were stored, and the next worker received them again.
        handed = {
            key: job
            for key, job in self._cache.items()
            if not job._accepted and job._write_to is not None and job._write_to._is_alive()
        }
        for key in handed:
            del self._cache[key]
        try:
            super().flush()
        finally:
            self._cache.update(handed)

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        super()._event_process_exit(hub, proc)
        for delay in REAP_RETRY_DELAYS:
            hub.call_later(delay, self.maintain_pool)


# What a child's read returns when another child took the job first: falsy, so billiard's child
# loop waits again (None would be the stop sentinel).
NO_JOB = ()


class IdleSafeJobQueue(SimpleQueue):  # type: ignore[misc]
    """The blocking pool's job pipe, never waited on with its lock held.

    Without ``get_payload`` billiard's child polls the pipe (unlocked) before each ``get``; the
    lock then covers the read of one job only. Every idle child wakes for each job and one reads
    it; the others find the pipe empty and wait again.
    """

    get_payload = None

    def get(self) -> Any:
        with self._rlock:
            if not self._reader.poll(0):
                return NO_JOB
            payload = self._reader.recv_bytes()
        return ForkingPickler.loads(payload)


class IdleSafeBlockingPool(BlockingPool):  # type: ignore[misc]
    def _setup_queues(self) -> None:
        super()._setup_queues()
        shared: Any = self._inqueue  # type: ignore[has-type]
        self._inqueue = IdleSafeJobQueue(ctx=self._ctx)
        self._quick_put = self._inqueue._writer.send
        shared.close()


class PreforkPool(TaskPool):  # type: ignore[misc]
    """Prefork, with exited children replaced within a second, and an idle child's SIGKILL
    harmless to the others."""

    Pool = PromptAsynPool
    BlockingPool = IdleSafeBlockingPool

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
