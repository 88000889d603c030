"""The delivery runner: one attempt per job message, then delivered, a retry later, or failed.

A failed attempt worth another (a connection error, a timeout, 408, 429, 5xx) publishes the job
again with a countdown: the wait is the broker's and the deliverer's timer's, and keeps no slot
busy. The backoff doubles from ``delivery_backoff_seconds`` up to
``delivery_backoff_max_seconds``, jittered, and a ``Retry-After`` of whole seconds is honoured up
to that cap; once the next attempt would fall outside ``retry_window_seconds`` from the first,
or the receiver refuses the call (any other 4xx), the delivery is ``failed`` and its job parked
on ``<queue>-callbacks-failed`` for a redelivery. Each final outcome is one log line and a count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from forwarder.config.hooks import CallbackSettings
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.deliveries.sender import Sender
from forwarder.hooks.deliveries.state import DELIVERED, FAILED, PENDING, DeliveryState, StateStore
from forwarder.hooks.delivery import Attempt, origin, retry_delay
from forwarder.observability.metrics import recorder

__all__ = ["DeliveryRunner", "JobQueues", "next_delay"]

log = logging.getLogger(__name__)


class JobQueues(Protocol):
    """Where a runner puts the jobs it is not done with."""

    def retry_later(self, job: DeliveryJob, countdown: float) -> None: ...

    def park(self, job: DeliveryJob) -> None: ...


def next_delay(
    job: DeliveryJob, result: Attempt, now: float, settings: CallbackSettings
) -> float | None:
    """Seconds until the next attempt of ``job`` (already counted), or None: no more attempts."""
    if not result.retry:
        return None
    delay = retry_delay(
        job.attempts,
        settings.delivery_backoff_seconds,
        settings.delivery_backoff_max_seconds,
        result.retry_after,
    )
    started = job.first_attempt_at if job.first_attempt_at is not None else now
    if now + delay > started + settings.retry_window_seconds:
        return None
    return delay


@dataclass
class DeliveryRunner:
    settings: CallbackSettings
    sender: Sender
    store: StateStore
    queues: JobQueues
    clock: Callable[[], float] = time.time

    def run(self, job: DeliveryJob) -> str:
        """Make one attempt of ``job``; returns the state it leaves the delivery in."""
        previous = self.store.get(job.task_id)
        if previous is not None and previous.status == DELIVERED:
            # A copy of a job already delivered (its message came back after a worker died).
            log.info("callback for task %s already delivered; copy dropped", job.task_id)
            return DELIVERED
        result = self.sender.send(job)
        now = self.clock()
        job = job.after_attempt(now)
        state = DeliveryState(
            task_id=job.task_id,
            status=PENDING,
            receiver=origin(job.url),
            stored_at=job.stored_at,
            attempts=job.attempts,
            last_status_code=result.status,
            last_error=None if result.delivered else result.problem,
            redeliveries=previous.redeliveries if previous is not None else 0,
        )
        if result.delivered:
            return self._final(job, state.updated(status=DELIVERED, delivered_at=now), now)
        delay = next_delay(job, result, now, self.settings)
        if delay is None:
            return self._final(job, state.updated(status=FAILED), now)
        self.store.put(state.updated(next_attempt_at=now + delay))
        log.info(
            "callback for task %s to %s: %s; attempt %d, next in %.1f s",
            job.task_id,
            state.receiver,
            result.problem,
            job.attempts,
            delay,
        )
        self.queues.retry_later(job, delay)
        if job.attempts == 1:
            recorder().callbacks_pending(job.queue, 1)
        recorder().callback_delivery(job.queue, "retried", None)
        return PENDING

    def _final(self, job: DeliveryJob, state: DeliveryState, now: float) -> str:
        if state.status == FAILED:
            # Parked before the state says failed: a redelivery finds the job of a failed state.
            self.queues.park(job)
        self.store.put(state)
        lag = now - job.stored_at
        metrics = recorder()
        metrics.callback_delivery(job.queue, state.status, lag)
        if job.attempts > 1:
            metrics.callbacks_pending(job.queue, -1)
        log.log(
            logging.INFO if state.status == DELIVERED else logging.WARNING,
            "callback for task %s to %s %s after %d attempt(s), %.1f s after the result "
            "was stored%s",
            job.task_id,
            state.receiver,
            state.status,
            job.attempts,
            lag,
            "" if state.status == DELIVERED else f"; last: {state.last_error}",
        )
        return state.status
