"""The Redis result backend's scripts against a real redis-server: what they store, and in how many
round trips."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.result import AsyncResult

from forwarder.celery_ext.backends.base import StartingTask
from forwarder.celery_ext.backends.redis import RedisBackend

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    app = Celery("t", set_as_current=False, backend=redis_url)
    app.conf.result_serializer = "json"
    try:
        yield RedisBackend(app=app, url=redis_url, expires=3600)
    finally:
        app.close()


def stored(backend: RedisBackend, task_id: str) -> dict[str, Any]:
    raw = backend.client.get(backend.get_key_for_task(task_id))
    assert raw is not None
    meta = json.loads(raw)
    assert isinstance(meta, dict)
    return meta


class RoundTrips:
    """Counts the commands (or pipelines) the backend's client sends to Redis."""

    def __init__(self, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.connection.Connection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)


def test_a_store_is_one_round_trip_with_its_expiry_and_is_published(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = backend.get_key_for_task("t1")
    subscriber = backend.client.pubsub()
    subscriber.subscribe(key)
    assert subscriber.get_message(timeout=2)["type"] == "subscribe"
    backend.store_result("warm-up", 0, states.SUCCESS)  # connects and loads the script
    round_trips = RoundTrips(backend, monkeypatch)
    backend.store_result("t1", {"answer": 42}, states.SUCCESS)
    assert round_trips.count == 1
    assert stored(backend, "t1")["result"] == {"answer": 42}
    assert 3590 < backend.client.ttl(key) <= 3600
    published = subscriber.get_message(timeout=2)
    assert published is not None and json.loads(published["data"])["status"] == "SUCCESS"
    subscriber.close()
    # Celery's own reader sees what was stored.
    assert AsyncResult("t1", app=backend.app, backend=backend).get(timeout=5) == {"answer": 42}


def test_a_success_is_never_overwritten(backend: RedisBackend) -> None:
    backend.store_result("t2", None, states.STARTED)
    assert stored(backend, "t2")["status"] == states.STARTED
    backend.store_result("t2", {"first": True}, states.SUCCESS)
    # A duplicate delivery of the same task ending otherwise does not replace the SUCCESS.
    backend.store_result("t2", RuntimeError("late duplicate"), states.FAILURE)
    backend.store_result("t2", None, states.STARTED)
    assert stored(backend, "t2")["status"] == states.SUCCESS
    assert stored(backend, "t2")["result"] == {"first": True}


def test_a_failure_keeps_the_custom_error_payload(backend: RedisBackend) -> None:
    backend.store_result("t3", ValueError("bad payload"), states.FAILURE)
    meta = stored(backend, "t3")
    assert meta["status"] == states.FAILURE
    assert json.loads(meta["result"]["custom"])["error"] == "bad payload"


def test_a_value_that_is_not_json_is_overwritten(backend: RedisBackend) -> None:
    backend.client.set(backend.get_key_for_task("t4"), b"\x80 not json")
    backend.store_result("t4", 1, states.SUCCESS)
    assert stored(backend, "t4")["result"] == 1


def starting(max_deliveries: int = 5) -> StartingTask:
    request = SimpleNamespace(
        id="a", hostname="host", args=[], kwargs={}, retries=0, delivery_info={}
    )
    return StartingTask({"pid": 1, "hostname": "host"}, request, max_deliveries)


def admit(backend: RedisBackend, task: StartingTask | None, task_id: str = "a") -> Any:
    return backend.admit(task_id, 0, task)


def test_admission_counts_reads_the_marker_and_stores_started_in_one_round_trip(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    admit(backend, starting(), task_id="warm-up")  # connects and loads the script
    round_trips = RoundTrips(backend, monkeypatch)
    admission = admit(backend, starting())
    assert round_trips.count == 1
    assert (admission.canceled, admission.deliveries, admission.started_stored) == (
        False,
        1,
        True,
    )
    assert stored(backend, "a")["status"] == states.STARTED
    assert stored(backend, "a")["result"] == {"pid": 1, "hostname": "host"}
    assert 3590 < backend.client.ttl(backend.deliveries_key("a", 0)) <= 3600
    assert admit(backend, starting()).deliveries == 2


def test_no_started_for_a_canceled_task(backend: RedisBackend) -> None:
    backend.set(backend.cancel_key("a"), "{}")
    admission = admit(backend, starting())
    assert (admission.canceled, admission.started_stored) == (True, False)
    assert backend.client.get(backend.get_key_for_task("a")) is None


def test_no_started_past_the_deliveries_cap(backend: RedisBackend) -> None:
    assert [admit(backend, starting(max_deliveries=2)).started_stored for _ in range(3)] == [
        True,
        True,
        False,
    ]


def test_no_started_for_a_task_that_may_not_start(backend: RedisBackend) -> None:
    admission = admit(backend, None)
    assert (admission.deliveries, admission.started_stored) == (1, False)
    assert backend.client.get(backend.get_key_for_task("a")) is None


def test_started_never_replaces_a_success(backend: RedisBackend) -> None:
    backend.store_result("a", "done", states.SUCCESS)
    admission = admit(backend, starting())
    assert (admission.completed, admission.started_stored) == (states.SUCCESS, False)
    assert stored(backend, "a")["status"] == states.SUCCESS


def test_a_completed_task_is_answered_in_the_same_round_trip(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    admit(backend, starting(), task_id="warm-up")
    backend.store_result("a", "done", states.SUCCESS)
    round_trips = RoundTrips(backend, monkeypatch)
    assert admit(backend, starting()).completed == states.SUCCESS
    assert round_trips.count == 1


def test_the_scripts_are_sent_again_after_redis_forgets_them(backend: RedisBackend) -> None:
    backend.store_result("t5", 1, states.SUCCESS)
    backend.client.script_flush()
    backend.store_result("t6", 2, states.SUCCESS)
    assert admit(backend, starting(), task_id="t7").started_stored is True
    assert stored(backend, "t6")["result"] == 2
