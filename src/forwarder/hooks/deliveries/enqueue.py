"""The worker's side: once a task's result is stored, its callback becomes a delivery job.

The callback hook calls an ``Enqueuer`` instead of the receiver: it stores the delivery state
``pending`` and sends the job to ``<queue>-callbacks``, both quick and neither waiting on the
receiver, so a receiver that is down, slow or hanging costs the inference slot nothing. The state
is stored first: the deliverer may finish the job before the send returns, and its state must
not be overwritten by this one.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from forwarder.config.settings import Settings
from forwarder.hooks.deliveries.broker import CeleryJobQueues, delivery_app
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.deliveries.state import FAILED, PENDING, DeliveryState, StateStore
from forwarder.hooks.delivery import origin
from forwarder.process_local import ProcessLocal

__all__ = ["Enqueuer"]


class Enqueuer:
    """Stores a job's ``pending`` state and sends the job; one Celery app per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A prefork child must not use the broker connections of the parent it was forked from.
        self._app: ProcessLocal[Celery] = ProcessLocal(lambda: delivery_app(settings))

    def __call__(self, job: DeliveryJob) -> None:
        app = self._app.get()
        store = StateStore(app.backend)
        state = DeliveryState(
            task_id=job.task_id, status=PENDING, receiver=origin(job.url), stored_at=job.stored_at
        )
        store.put(state)
        try:
            CeleryJobQueues(app).enqueue(job)
        except Exception as exc:
            store.put(state.updated(status=FAILED, last_error=f"not queued: {_shown(exc)}"))
            raise

    def close(self) -> None:
        app = self._app.take()
        if app is not None:
            app.close()


def _shown(exc: Any) -> str:
    return f"{type(exc).__name__}: {exc}"
