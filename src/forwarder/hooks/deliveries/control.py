"""Listing delivery states and redelivering failed callbacks: the CLI's and the gateway's.

A failed delivery's job waits on ``<queue>-callbacks-failed`` (with the request's own auth, as
the task's message carried it; never in a stored record). A redelivery takes it off that queue,
sets the state back to ``pending`` and sends the job to ``<queue>-callbacks`` as a first attempt
with a new retry window: the same ``webhook-id``, so a receiver that did take an earlier attempt
can still drop it. Reading the parked jobs in place needs a Redis or embedded broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery

from forwarder.client.dead_letters import envelope_body, open_queue_store
from forwarder.config.settings import Settings
from forwarder.hooks.deliveries.broker import CeleryJobQueues
from forwarder.hooks.deliveries.jobs import DeliveryJob, parked_queue
from forwarder.hooks.deliveries.state import FAILED, PENDING, DeliveryState, StateStore

__all__ = ["Redelivery", "list_states", "redeliver"]


def list_states(app: Celery, *, failed_only: bool = False) -> Iterator[DeliveryState]:
    for state in StateStore(app.backend).all():
        if not failed_only or state.status == FAILED:
            yield state


@dataclass(frozen=True)
class Redelivery:
    redelivered: list[DeliveryState]  # as each was stored, pending, before its job went out
    not_failed: list[str]  # no parked job for these ids (pending, delivered or unknown)


def redeliver(settings: Settings, app: Celery, task_ids: Iterable[str] | None) -> Redelivery:
    """Send the parked jobs of ``task_ids`` (None: every failed one) to be delivered again."""
    wanted = None if task_ids is None else set(task_ids)
    store = StateStore(app.backend)
    queues = CeleryJobQueues(app)
    parked = open_queue_store(settings, parked_queue(settings.worker.queue))
    sent: list[DeliveryState] = []
    try:
        for entry, job in _parked(parked):
            if job is None or (wanted is not None and job.task_id not in wanted):
                continue
            if job.task_id in {state.task_id for state in sent} or not parked.take(entry):
                continue
            try:
                state = _send(store, queues, job.fresh())
            except BaseException:
                parked.put_back(entry)
                raise
            parked.done(entry)
            sent.append(state)
    finally:
        parked.close()
    missing = sorted((wanted or set()) - {state.task_id for state in sent})
    return Redelivery(sent, missing)


def _send(store: StateStore, queues: CeleryJobQueues, job: DeliveryJob) -> DeliveryState:
    state = store.get(job.task_id)
    redeliveries = state.redeliveries + 1 if state is not None else 1
    pending = DeliveryState(
        task_id=job.task_id,
        status=PENDING,
        receiver=state.receiver if state is not None else "",
        stored_at=job.stored_at,
        last_status_code=state.last_status_code if state is not None else None,
        last_error=state.last_error if state is not None else None,
        redeliveries=redeliveries,
    )
    store.put(pending)
    queues.enqueue(job)
    return pending


def _parked(parked: Any) -> Iterator[tuple[Any, DeliveryJob | None]]:
    """Each parked message (as ``take`` wants it) and its job; None: not a job."""
    for entry in list(parked.entries()):
        try:
            job = DeliveryJob.from_kwargs({"job": envelope_body(parked.text_of(entry))})
        except Exception:
            job = None
        yield entry, job
