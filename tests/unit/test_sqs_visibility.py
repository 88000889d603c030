"""Which SQS messages the worker renews: those of every task it holds, read from Celery's state.

The renewal itself runs against moto in tests/faults/test_sqs_visibility.py; here, the receipts
it would renew, from stand-ins for Celery's requests in ``celery.worker.state``.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker import state as worker_state

from forwarder.celery_ext.sqs_visibility import KeepVisible

WORK = "https://sqs.test/1/work"
OTHER = "https://sqs.test/1/other"


class Request:
    """What Celery keeps of a held task, as far as renewal reads it: its kombu message."""

    def __init__(self, delivery_info: dict[str, Any]) -> None:
        self.message = SimpleNamespace(delivery_info=delivery_info)


def sqs(url: str, receipt: str) -> Request:
    return Request({"sqs_queue": url, "sqs_message": {"ReceiptHandle": receipt}})


def held(monkeypatch: pytest.MonkeyPatch, **sets: list[Request]) -> None:
    for name in ("reserved_requests", "active_requests", "scheduled_requests"):
        monkeypatch.setattr(worker_state, name, weakref.WeakSet(sets.get(name, [])))


def step() -> KeepVisible:
    keep = KeepVisible(None)
    keep.timeouts = {WORK: 30}
    return keep


def test_every_held_task_of_a_renewed_queue_is_listed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting, running, later = sqs(WORK, "r1"), sqs(WORK, "r2"), sqs(WORK, "r3")
    foreign, no_receipt = sqs(OTHER, "x"), Request({"routing_key": "work"})
    held(
        monkeypatch,
        reserved_requests=[waiting, running, foreign, no_receipt],
        active_requests=[running],  # Celery keeps a running task in both
        scheduled_requests=[later],
    )
    receipts = step()._held()
    assert list(receipts) == [WORK]
    assert sorted(receipts[WORK]) == ["r1", "r2", "r3"]


def test_nothing_held_renews_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    held(monkeypatch)
    assert step()._held() == {}
