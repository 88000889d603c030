"""Delivery counting, the dead-letter copy, and list / replay on the embedded broker."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from forwarder.celery_ext.backends.base import Admission
from forwarder.celery_ext.backends.filesystem import FilesystemBackend
from forwarder.cli.commands import main
from forwarder.client.broker import ForwarderClient
from forwarder.client.dead_letters import open_dead_letters, replay
from forwarder.config.settings import load_settings
from forwarder.errors import DeadLettered
from forwarder.protocol import LIRA_TASK_NAME
from forwarder.worker.admission import admit as admit_task
from forwarder.worker.crash_loop import CrashLoopGuard, DeadLetter
from forwarder.worker.limits import TaskLimits

QUEUE = "inference"
DEAD = "inference-dead-letter"


@pytest.fixture
def file_backend(tmp_path: Path) -> Iterator[FilesystemBackend]:
    app = Celery("t", set_as_current=False)
    folder = tmp_path / "results"
    folder.mkdir()
    try:
        yield FilesystemBackend(app=app, url=f"file://{folder}")
    finally:
        app.close()


def admit(backend: Any, task_id: str, retries: int = 0) -> Any:
    return backend.admit(task_id, retries, None)


def test_each_delivery_is_counted_per_task_and_per_retry(file_backend: Any) -> None:
    assert [admit(file_backend, "a").deliveries for _ in range(3)] == [1, 2, 3]
    assert admit(file_backend, "b").deliveries == 1
    # A retry is a new message: its deliveries are counted apart from the crashed ones.
    assert admit(file_backend, "a", retries=1).deliveries == 1
    assert admit(file_backend, "a").canceled is False
    file_backend.set(file_backend.cancel_key("a"), "{}")
    assert admit(file_backend, "a") == Admission(canceled=True, deliveries=5)


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.published.append((body, options))


def poison_task(producer: Any, *, task_id: str = "t-1", retries: int = 0) -> Any:
    app = SimpleNamespace(producer_or_acquire=lambda: contextlib.nullcontext(producer))
    request = SimpleNamespace(
        id=task_id,
        args=[{"args": {"x": 1}}, "2026-01-01T00:00:00"],
        kwargs={"ttl_seconds": 60},
        retries=retries,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    return SimpleNamespace(name=LIRA_TASK_NAME, request=request, app=app)


def test_past_the_cap_the_task_is_copied_to_the_dead_letter_queue() -> None:
    producer = Producer()
    guard = CrashLoopGuard(3, QUEUE, DEAD)
    task = poison_task(producer, retries=2)
    assert guard.check(task, 3) is None
    assert producer.published == []
    error = guard.check(task, 4)
    assert isinstance(error, DeadLettered) and error.state == "FAILURE"
    assert str(error) == (
        "dead-lettered after 3 deliveries that did not finish (max_deliveries=3); "
        f"not forwarded again; copied to {DEAD}"
    )
    [(body, options)] = producer.published
    assert options["routing_key"] == DEAD and options["serializer"] == "json"
    letter = DeadLetter.from_body(body)
    assert (letter.task_id, letter.task, letter.queue, letter.retries, letter.deliveries) == (
        "t-1",
        LIRA_TASK_NAME,
        QUEUE,
        2,
        3,
    )
    assert letter.args == task.request.args and letter.kwargs == {"ttl_seconds": 60}
    assert letter.trace == {"traceparent": task.request.traceparent}


def test_a_copy_that_cannot_be_sent_still_ends_the_task() -> None:
    error = CrashLoopGuard(1, QUEUE, DEAD).check(poison_task(Producer(fail=True)), 2)
    assert error is not None
    assert "its copy to inference-dead-letter failed (ConnectionError: broker down)" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"task_id": "x"},
        {**DeadLetter("a", "b", "q", [], {}, 0, 1, 0.0).as_body(), "retries": True},
    ],
)
def test_anything_else_on_the_queue_is_not_a_dead_letter(body: Any) -> None:
    with pytest.raises(ValueError, match="not a dead letter"):
        DeadLetter.from_body(body)


def test_the_listing_shows_no_user_data_unless_asked() -> None:
    letter = DeadLetter("a", LIRA_TASK_NAME, QUEUE, [{"args": {"secret": 1}}], {"k": 2}, 0, 5, 0)
    shown = letter.summary()
    assert shown["payload_keys"] == ["args"] and shown["kwargs_keys"] == ["k"]
    assert shown["dead_lettered_at"] == "1970-01-01T00:00:00Z"
    assert "secret" not in json.dumps(shown)
    assert letter.summary(show_payload=True)["args"] == [{"args": {"secret": 1}}]


# ------------------------------------------------------------------- the embedded broker, for real


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ForwarderClient]:
    forwarder_client = ForwarderClient(
        load_settings(env={}, flags={"--data-dir": str(tmp_path / "data")})
    )
    try:
        yield forwarder_client
    finally:
        forwarder_client.close()


def queued(client: ForwarderClient, queue: str) -> list[str]:
    folder = Path(client.app.conf.broker_transport_options["data_folder_in"])
    return sorted(name for name in os.listdir(folder) if name.endswith(f".{queue}.msg"))


def test_dead_letters_are_listed_and_replayed_on_the_embedded_broker(
    client: ForwarderClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    backend = client.app.backend
    for _ in range(3):
        admit(backend, "t-1")
    task = poison_task(None)
    task.app = client.app
    task.request.args = [{"args": {"x": 1}}, datetime(2026, 1, 1)]
    error = CrashLoopGuard(2, QUEUE, DEAD).check(task, 3)
    assert error is not None
    backend.store_result("t-1", backend.prepare_exception(error), error.state)
    assert len(queued(client, DEAD)) == 1

    store = open_dead_letters(client.settings)
    [entry] = list(store.entries())
    assert entry.letter is not None and entry.letter.args[1] == datetime(2026, 1, 1)
    flags = ["--data-dir", str(tmp_path / "data")]
    assert main(["dead-letter", "list", *flags]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["task_id"] == "t-1"

    assert main(["dead-letter", "replay", "t-1", "unknown", *flags]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"task_id": "t-1", "queue": QUEUE, "replayed": True}
    assert "unknown is not on the dead-letter queue" in captured.err
    assert queued(client, DEAD) == [] and len(queued(client, QUEUE)) == 1
    # A first delivery again: no count, no FAILURE.
    assert admit(backend, "t-1").deliveries == 1
    assert client.get("t-1").status == "PENDING"
    assert list(replay(client.app, store, None)) == []


def test_replay_needs_task_ids_or_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    flags = ["--data-dir", str(tmp_path / "data")]
    assert main(["dead-letter", "replay", *flags]) == 2
    assert main(["dead-letter", "replay", "x", "--all", *flags]) == 2
    assert "task ids or --all" in capsys.readouterr().err


def test_admission_dead_letters_the_delivery_after_the_cap(file_backend: Any) -> None:
    producer = Producer()
    guard = CrashLoopGuard(2, QUEUE, DEAD)
    task = poison_task(producer)
    task.backend = file_backend
    task.request.hostname = "w@host"
    for _ in range(2):
        assert admit_task(task, TaskLimits(), guard) is None
        assert file_backend.get_task_meta("t-1")["status"] == "STARTED"
    error = admit_task(task, TaskLimits(), guard)
    assert isinstance(error, DeadLettered)
    assert "dead-lettered after 2 deliveries" in str(error)
    assert len(producer.published) == 1
