"""What every result backend does for the worker and its readers: file, Redis and S3 alike.

Each backend is the one the worker builds from its settings, against its real store: a folder,
the session's redis-server, the session's moto server. The forwarder's client reads through the
same settings; a plain Celery app, configured for Celery's own backend of that kind and knowing
nothing of the forwarder, reads the same store, as an existing model-engine gateway does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, states
from celery.app.task import Context
from celery.result import AsyncResult

from forwarder.celery_ext.backends.base import Admission, StartingTask
from forwarder.client.broker import ForwarderClient, TaskResult
from forwarder.config.settings import load_settings
from forwarder.errors import PayloadError, TaskCanceled, TaskDeadlineExceeded, TaskExpired
from forwarder.protocol import CANCELED
from support.aws import MotoServer

pytestmark = pytest.mark.integration

BACKENDS = ["file", "redis", "s3"]
QUEUE = "contract"
BUCKET = "contract-results"
PREFIX = "forwarder/tasks"
SUCCESS_RESULT = {"result": '{"x": 1}', "status_code": 200}


@dataclass
class Store:
    """One result store, as the worker writes it and as two kinds of client read it."""

    kind: str
    backend: Any  # the worker's: built from the settings by forwarder.celery_ext.brokers
    client: ForwarderClient
    plain: Celery  # Celery's own backend for the same store

    def stored(self, task_id: str) -> dict[str, Any] | None:
        """The JSON stored for the task, as it is in the store."""
        raw = self.backend.get(self.backend.get_key_for_task(task_id))
        return None if raw is None else dict(json.loads(raw))

    def plain_result(self, task_id: str) -> AsyncResult:
        return AsyncResult(task_id, app=self.plain)


def _file(tmp_path: Path) -> tuple[dict[str, object], dict[str, Any]]:
    data_dir = tmp_path / "data"
    return {"--data-dir": str(data_dir)}, {"result_backend": f"file://{data_dir / 'results'}"}


def _redis(request: pytest.FixtureRequest) -> tuple[dict[str, object], dict[str, Any]]:
    url: str = request.getfixturevalue("redis_url")
    return {"--broker-url": url}, {"result_backend": url}


def _s3(request: pytest.FixtureRequest) -> tuple[dict[str, object], dict[str, Any]]:
    moto: MotoServer = request.getfixturevalue("moto_here")
    moto.client("s3").create_bucket(Bucket=BUCKET)
    flags: dict[str, object] = {
        # The broker is never reached here: only its URL is needed for an S3 result backend.
        "--sqs-url": f"{moto.endpoint_url}/123456789012/{QUEUE}",
        "--result-backend": f"s3://{BUCKET}/{PREFIX}",
    }
    plain: dict[str, Any] = {
        "result_backend": "s3",
        "s3_bucket": BUCKET,
        "s3_base_path": f"{PREFIX}/",
        "s3_endpoint_url": moto.endpoint_url,
        "s3_region": moto.region,
    }
    return flags, plain


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend in turn; a missing redis-server or moto skips, or fails when CI is set."""
    if request.param == "file":
        flags, plain_conf = _file(tmp_path)
    elif request.param == "redis":
        flags, plain_conf = _redis(request)
    else:
        flags, plain_conf = _s3(request)
    client = ForwarderClient(load_settings(env={}, flags={"--queue": QUEUE, **flags}))
    backend = client.app.backend  # built first: for the file backend, it makes the folder
    plain = Celery("plain", set_as_current=False)
    plain.conf.update(accept_content=["json"], result_accept_content=["json"], **plain_conf)
    try:
        yield Store(request.param, backend, client, plain)
    finally:
        plain.close()
        client.close()


def new_id() -> str:
    return str(uuid.uuid4())


def raised(error: BaseException) -> BaseException:
    """``error`` with the traceback it has when a task raises it."""
    try:
        raise error
    except BaseException as caught:
        return caught


# --------------------------------------------------------------------------------- results


def test_an_unknown_task_is_pending(store: Store) -> None:
    unknown = new_id()
    assert store.client.get(unknown) == TaskResult(unknown, states.PENDING)
    assert store.plain_result(unknown).state == states.PENDING
    assert store.backend.get_task_meta(unknown)["status"] == states.PENDING
    assert store.stored(unknown) is None


def test_a_success_is_read_back_by_the_client_and_by_plain_celery(store: Store) -> None:
    task_id = new_id()
    store.backend.store_result(task_id, SUCCESS_RESULT, states.SUCCESS)
    assert store.client.get(task_id) == TaskResult(task_id, states.SUCCESS, result=SUCCESS_RESULT)
    plain = store.plain_result(task_id)
    assert plain.get(timeout=5) == SUCCESS_RESULT
    assert plain.state == states.SUCCESS
    stored = store.stored(task_id)
    assert stored is not None
    assert (stored["status"], stored["result"], stored["task_id"]) == (
        states.SUCCESS,
        SUCCESS_RESULT,
        task_id,
    )


def test_a_failure_keeps_exc_type_exc_message_and_the_custom_error(store: Store) -> None:
    task_id = new_id()
    message = "payload must be a JSON object, got list"
    store.backend.mark_as_failure(task_id, raised(PayloadError(message)))
    stored = store.stored(task_id)
    assert stored is not None and stored["status"] == states.FAILURE, stored
    assert stored["result"]["exc_type"] == "PayloadError"
    assert stored["result"]["exc_message"] == [message]
    custom = json.loads(stored["result"]["custom"])
    assert set(custom) == {"error", "error_metadata"}, custom
    assert custom["error"] == message
    assert custom["error_metadata"].startswith("Internal failure\nTraceback"), custom
    assert "PayloadError" in custom["error_metadata"]

    failed = store.client.get(task_id)
    assert (failed.status, failed.error, failed.result) == (states.FAILURE, message, None)
    plain = store.plain_result(task_id)
    assert plain.state == states.FAILURE
    assert type(plain.result).__name__ == "PayloadError" and str(plain.result) == message


@pytest.mark.parametrize(
    "error",
    [
        TaskExpired("waited 2.000 s in the queue, longer than its ttl_seconds=1"),
        TaskDeadlineExceeded("the model call took longer than its timeout_seconds=1"),
        TaskCanceled("canceled before it started; not forwarded to the model server"),
    ],
    ids=lambda error: error.state,
)
def test_a_stopped_state_is_stored_like_a_failure(
    store: Store, error: TaskExpired | TaskDeadlineExceeded | TaskCanceled
) -> None:
    task_id = new_id()
    store.backend.store_stopped(task_id, error)
    stored = store.stored(task_id)
    assert stored is not None and stored["status"] == error.state, stored
    assert stored["result"]["exc_type"] == type(error).__name__
    assert stored["result"]["exc_message"] == [str(error)]
    assert json.loads(stored["result"]["custom"])["error"] == str(error)
    read = store.client.get(task_id)
    assert (read.status, read.error, read.ready) == (error.state, str(error), True)
    assert store.plain_result(task_id).state == error.state


def test_a_success_is_never_overwritten_by_a_later_store(store: Store) -> None:
    task_id = new_id()
    store.backend.store_result(task_id, None, states.STARTED)
    assert store.client.get(task_id).status == states.STARTED
    store.backend.store_result(task_id, SUCCESS_RESULT, states.SUCCESS)
    # A duplicate delivery of the same task, ending otherwise, replaces nothing.
    store.backend.store_result(task_id, None, states.STARTED)
    store.backend.mark_as_failure(task_id, raised(RuntimeError("late duplicate")))
    store.backend.store_stopped(task_id, TaskCanceled("canceled after it ended"))
    stored = store.stored(task_id)
    assert stored is not None
    assert (stored["status"], stored["result"]) == (states.SUCCESS, SUCCESS_RESULT)
    assert store.plain_result(task_id).get(timeout=5) == SUCCESS_RESULT


# ------------------------------------------------------------------------- key/value store


def test_the_cancel_marker_is_set_read_with_mget_and_deleted(store: Store) -> None:
    backend = store.backend
    canceled, running = new_id(), new_id()
    marker = backend.cancel_key(canceled)
    assert backend.get(marker) is None
    body = {"task_id": canceled, "canceled_at": 1.5}
    backend.set(marker, json.dumps(body))
    assert json.loads(backend.get(marker)) == body
    # What the cancel watcher reads for the tasks in flight: one value per key, in order.
    markers = list(backend.mget([marker, backend.cancel_key(running)]))
    assert [None if value is None else json.loads(value) for value in markers] == [body, None]
    # The marker lies beside the task's result, never in its place.
    assert store.client.get(canceled).status == states.PENDING
    backend.delete(marker)
    assert backend.get(marker) is None
    assert list(backend.mget([marker])) == [None]


def test_forget_makes_a_stored_result_pending_again(store: Store) -> None:
    task_id = new_id()
    store.backend.mark_as_failure(task_id, raised(RuntimeError("dead-lettered")))
    assert store.client.get(task_id).status == states.FAILURE
    store.backend.forget(task_id)
    assert store.stored(task_id) is None
    assert store.client.get(task_id).status == states.PENDING
    assert store.plain_result(task_id).state == states.PENDING


# ------------------------------------------------------------------------------- admission


def admit(store: Store, task_id: str, retries: int = 0, *, may_start: bool = True) -> Admission:
    """One delivery's admission, as the worker runs it before forwarding the task."""
    backend = store.backend
    request = Context(id=task_id, hostname="host", args=[], kwargs={}, retries=retries)
    starting = StartingTask({"pid": 1, "hostname": "host"}, request, 5) if may_start else None
    return backend.admit(task_id, retries, starting)


def test_admission_counts_deliveries_reads_the_marker_and_keeps_a_success(store: Store) -> None:
    def status(task_id: str) -> str:
        return store.client.get(task_id).status

    task_id = new_id()
    first = admit(store, task_id)
    assert (first.canceled, first.deliveries) == (False, 1)
    # STARTED is stored in the admission's own round trip, or left to the worker (PENDING).
    assert status(task_id) == (states.STARTED if first.started_stored else states.PENDING)
    if first.started_stored:
        stored = store.stored(task_id)
        assert stored is not None and stored["result"] == {"pid": 1, "hostname": "host"}
    assert admit(store, task_id).deliveries == 2
    assert admit(store, task_id, retries=1).deliveries == 1  # a retry counts anew
    # Replaying a dead letter deletes its count: the next delivery is a first one again.
    store.backend.delete(store.backend.deliveries_key(task_id, 0))
    assert admit(store, task_id).deliveries == 1

    canceled = new_id()
    store.backend.set(store.backend.cancel_key(canceled), json.dumps({"task_id": canceled}))
    admission = admit(store, canceled)
    assert (admission.canceled, admission.deliveries, admission.started_stored) == (True, 1, False)
    assert status(canceled) == states.PENDING

    expired = new_id()
    admission = admit(store, expired, may_start=False)
    assert (admission.canceled, admission.deliveries, admission.started_stored) == (False, 1, False)
    assert status(expired) == states.PENDING


def test_a_cancel_that_lands_during_admission_is_never_overwritten_by_started(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads no marker; the client's whole cancel runs; then the worker stores.

    Whatever the cancel answered stays true: CANCELED stays CANCELED and the delivery is told it
    is canceled (file, S3: the STARTED write is conditional), or the cancel saw STARTED (Redis:
    the marker read and the STARTED store are one script) and the task runs to be watched.
    """
    backend = store.backend
    read_admission = backend._read_admission
    answers: list[TaskResult] = []

    def cancel_in_between(task_id: str, retries: int, starting: StartingTask | None) -> Admission:
        admission = read_admission(task_id, retries, starting)
        answers.append(store.client.cancel(task_id))
        return admission

    monkeypatch.setattr(backend, "_read_admission", cancel_in_between)
    task_id = new_id()
    admission = admit(store, task_id)
    [answer] = answers
    stored = store.stored(task_id)
    assert stored is not None
    if answer.status == CANCELED:
        assert stored["status"] == CANCELED, "STARTED overwrote the CANCELED the client was told"
        assert (admission.canceled, admission.started_stored) == (True, False)
        assert not admission.may_start(5)
    else:
        assert answer.status == states.STARTED == stored["status"]
        assert (admission.canceled, admission.started_stored) == (False, True)
    if store.kind != "redis":
        assert answer.status == CANCELED


def test_a_cancel_never_overwrites_a_started_stored_after_its_read(store: Store) -> None:
    """The client read PENDING; a worker's STARTED lands before the client's CANCELED write."""
    backend = store.backend
    task_id = new_id()
    backend.set(backend.cancel_key(task_id), json.dumps({"task_id": task_id}))
    get = backend.get
    key = backend.get_key_for_task(task_id)
    started = backend.encoded_meta(task_id, {"pid": 1}, states.STARTED)
    calls = 0

    def started_after_first_read(read_key: str | bytes) -> bytes | None:
        nonlocal calls
        value = get(read_key)
        if read_key == key:
            calls += 1
            if calls == 1:  # the worker's write lands just after the client's read
                backend.set(key, started)
        return value

    backend.get = started_after_first_read
    try:
        backend.cancel_unless_running(task_id, TaskCanceled("canceled"), {states.PENDING})
    finally:
        del backend.get
    assert store.client.get(task_id).status == states.STARTED


@pytest.mark.parametrize("state", [states.SUCCESS, states.FAILURE])
def test_admission_of_a_completed_task_answers_completed_and_changes_nothing(
    store: Store, state: str
) -> None:
    task_id = new_id()
    admit(store, task_id)
    if state == states.SUCCESS:
        store.backend.store_result(task_id, SUCCESS_RESULT, states.SUCCESS)
    else:
        store.backend.mark_as_failure(task_id, raised(PayloadError("bad payload")))
    before = store.stored(task_id)
    # A redelivery: the same id again, whether it may start or has expired since.
    for may_start in (True, False):
        admission = admit(store, task_id, may_start=may_start)
        assert admission.completed == state
        assert (admission.canceled, admission.started_stored) == (False, False)
        assert not admission.may_start(5)
    assert store.stored(task_id) == before, "no STARTED stored over the completed result"
    count = store.backend.get(store.backend.deliveries_key(task_id, 0))
    assert int(count) == 1, "a redelivery of completed work is not counted"


def test_admission_of_a_task_stopped_by_a_client_is_not_completed(store: Store) -> None:
    task_id = new_id()
    store.backend.set(store.backend.cancel_key(task_id), json.dumps({"task_id": task_id}))
    store.backend.store_stopped(task_id, TaskCanceled("canceled before it started"))
    admission = admit(store, task_id)
    assert (admission.completed, admission.canceled, admission.deliveries) == (None, True, 1)


def test_s3_conditional_put_loses_to_a_write_after_its_read(store: Store) -> None:
    """Another writer lands between the read and the put: S3 refuses the put (412)."""
    if store.kind != "s3":
        pytest.skip("S3's conditional put; the file backend compares under a lock")
    backend = store.backend
    task_id = new_id()
    key = backend.get_key_for_task(task_id)
    read = backend._get_versioned
    started = backend.encoded_meta(task_id, {"pid": 1}, states.STARTED)
    for before in (None, backend.encoded_meta(task_id, {"pid": 0}, states.STARTED)):
        if before is not None:
            backend.set(key, before)
        expected = backend.get(key)

        def then_another_write(read_key: str | bytes) -> tuple[bytes | None, str | None]:
            seen = read(read_key)
            backend.set(key, started)
            return seen

        backend._get_versioned = then_another_write
        try:
            assert not backend._set_if_unchanged(key, expected, b'{"status": "CANCELED"}')
        finally:
            del backend._get_versioned
        assert backend.get(key) == started.encode()
