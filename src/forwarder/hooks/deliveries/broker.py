"""The delivery jobs' Celery app: the same broker and result backend, its own queues and timeout.

The app is the forwarder's (``forwarder.celery_ext.brokers.celery_app``) with the visibility
timeout of delivery jobs, which must outlast the longest wait for a retry: with Redis a job
waiting for its countdown is held, unacknowledged, by the deliverer that took it, and one held
longer than the timeout would be handed out again. On SQS the jobs' queues are siblings of the
work queue (same account and region), listed in ``predefined_queues`` as kombu requires.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from forwarder.celery_ext.brokers import celery_app
from forwarder.config.settings import Settings
from forwarder.hooks.deliveries.jobs import DeliveryJob, callbacks_queue, parked_queue
from forwarder.protocol import DELIVER_TASK_NAME

__all__ = ["CeleryJobQueues", "delivery_app"]


def delivery_app(settings: Settings, name: str = "forwarder-callbacks") -> Celery:
    """A Celery app that sends and consumes ``settings``' delivery jobs."""
    app = celery_app(settings, name=name)
    visibility = settings.hooks.callback.visibility_seconds
    options: dict[str, Any] = dict(app.conf.broker_transport_options)
    options["visibility_timeout"] = visibility
    # kombu sweeps unacknowledged jobs of dead deliverers back every interval * throttle seconds;
    # a short timeout (tests, small backoff caps) wants an early sweep too.
    options["unacked_restore_interval"] = max(1.0, min(10.0, visibility / 10))
    options["unacked_restore_throttle"] = 1
    if settings.worker.sqs_url:
        options["predefined_queues"] = _sqs_queues(settings, options["predefined_queues"])
    app.conf.broker_transport_options = options
    return app


def _sqs_queues(settings: Settings, queues: dict[str, Any]) -> dict[str, Any]:
    worker = settings.worker
    base = str(worker.sqs_url).rstrip("/").rpartition("/")[0]
    visibility = settings.hooks.callback.visibility_seconds
    return {
        **queues,
        callbacks_queue(worker.queue): {
            "url": f"{base}/{callbacks_queue(worker.queue)}",
            "visibility_timeout": visibility,
        },
        parked_queue(worker.queue): {"url": f"{base}/{parked_queue(worker.queue)}"},
    }


class CeleryJobQueues:
    """A retry is the job sent again with a countdown; a parked job a plain JSON message."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def enqueue(self, job: DeliveryJob, countdown: float | None = None) -> None:
        self.app.send_task(
            DELIVER_TASK_NAME,
            kwargs=job.as_kwargs(),
            queue=callbacks_queue(job.queue),
            countdown=countdown,
            retry=True,
        )

    def retry_later(self, job: DeliveryJob, countdown: float) -> None:
        self.enqueue(job, countdown)

    def park(self, job: DeliveryJob) -> None:
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                job.as_kwargs()["job"],
                exchange="",
                routing_key=parked_queue(job.queue),
                serializer="json",
                retry=True,
            )
