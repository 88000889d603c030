"""Task limits, cancel markers and the interruption of a model call, in one process.

The interrupters are exercised on real sockets: SIGALRM in this (main) thread for prefork, and
greenlets on gevent's own sockets (nothing is monkey-patched here). The cancel markers and the
client's cancel go through the forwarder's real file result backend in a temporary folder; the
admission and the stopped states are in test_lifecycle.py.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from forwarder.celery_ext.backends.filesystem import FilesystemBackend
from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import ModelServerSettings, load_settings
from forwarder.devtools.echo_server import make_server
from forwarder.errors import PayloadError, TaskCanceled, TaskDeadlineExceeded, TaskStopped
from forwarder.hooks import TaskOutcome
from forwarder.protocol import EXPIRED, TIMEOUT
from forwarder.worker.cancel_watch import CancelWatch, Watcher
from forwarder.worker.forwarding import Forwarder
from forwarder.worker.interrupts import Call, GreenletInterrupter, Interrupt, SignalInterrupter
from forwarder.worker.limits import TaskLimits

HOST = "127.0.0.1"

# ------------------------------------------------------------------------------------ TaskLimits


def test_no_limits_by_default() -> None:
    limits = TaskLimits.parse()
    assert limits == TaskLimits()
    assert limits.as_kwargs() == {}
    assert limits.expired(time.time()) is None


def test_limits_round_trip_through_kwargs() -> None:
    limits = TaskLimits.parse(5, 2.5, 1_700_000_000)
    kwargs = {**limits.as_kwargs(), "trace_id": "abc"}
    assert limits.as_kwargs() == {
        "ttl_seconds": 5.0,
        "timeout_seconds": 2.5,
        "submitted_at": 1_700_000_000.0,
    }
    assert TaskLimits.pop_from(kwargs) == limits
    assert kwargs == {"trace_id": "abc"}, "unknown keys are left for the worker's warning"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl_seconds": -1, "submitted_at": 1}, "ttl_seconds must be a positive number of "),
        ({"ttl_seconds": 0, "submitted_at": 1}, "ttl_seconds must be a positive number of "),
        ({"timeout_seconds": "5"}, "timeout_seconds must be a positive number of seconds, got '5'"),
        ({"timeout_seconds": True}, "timeout_seconds must be a positive number of seconds, got T"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds must be a positive number"),
        ({"timeout_seconds": float("inf")}, "timeout_seconds must be a positive number"),
        ({"timeout_seconds": [1]}, "timeout_seconds must be a positive number"),
        ({"ttl_seconds": 5, "submitted_at": "now"}, "submitted_at must be a UTC epoch time in"),
        ({"ttl_seconds": 5}, "ttl_seconds needs submitted_at, the UTC epoch time of the send"),
    ],
)
def test_a_bad_limit_is_a_payload_error_naming_it(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        TaskLimits.pop_from(dict(kwargs))
    assert str(caught.value).startswith(message)


def test_expired_only_once_the_ttl_has_passed() -> None:
    limits = TaskLimits.parse(ttl_seconds=2, submitted_at=1000)
    assert limits.expired(1002.0) is None
    expired = limits.expired(1002.5)
    assert expired is not None
    assert expired.state == EXPIRED
    assert str(expired) == (
        "waited 2.500 s in the queue, longer than its ttl_seconds=2; "
        "not forwarded to the model server"
    )
    # A send stamped in the future (a client's clock ahead) has not waited at all.
    assert limits.expired(900.0) is None


# ---------------------------------------------------------------------------------- TaskOutcome


def test_outcome_status_defaults_from_succeeded_and_shows_in_the_body() -> None:
    assert TaskOutcome("t", None, {}, succeeded=True).status == "SUCCESS"
    assert TaskOutcome("t", None, {}, succeeded=False, error="E: x").status == "FAILURE"
    stopped = TaskOutcome("t", None, {}, False, error="TaskExpired: late", status=EXPIRED)
    assert stopped.response_body() == {
        "task_id": "t",
        "status": "EXPIRED",
        "error": "TaskExpired: late",
    }


# ---------------------------------------------------------------------------- prefork: signals


@pytest.fixture
def sigalrm() -> Iterator[list[int]]:
    """SIGALRM's handler and timer put back after the test; the list records the old handler."""
    seen: list[int] = []
    handler = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    timer = signal.getitimer(signal.ITIMER_REAL)
    try:
        yield seen
    finally:
        signal.setitimer(signal.ITIMER_REAL, *timer)
        signal.signal(signal.SIGALRM, handler)


def _blocked_read(interrupter: Any, timeout: float | None, wait: float = 5.0) -> Any:
    """Arm, block in recv on a socket nobody writes to, disarm; the Interrupt, if any."""
    left, right = socket.socketpair()
    left.settimeout(wait)
    call = interrupter.arm("task-1", timeout)
    try:
        try:
            left.recv(1)
        finally:
            interrupter.disarm(call)
    except Interrupt as interrupt:
        return interrupt
    finally:
        left.close()
        right.close()
    return None


def test_the_deadline_interrupts_a_blocking_read(sigalrm: list[int]) -> None:
    started = time.monotonic()
    interrupt = _blocked_read(SignalInterrupter(), 0.1)
    assert isinstance(interrupt, Interrupt)
    assert interrupt.reason is TaskDeadlineExceeded
    assert 0.1 <= time.monotonic() - started < 1.0


def test_a_cancel_from_another_thread_interrupts_the_main_thread(sigalrm: list[int]) -> None:
    interrupter = SignalInterrupter()
    armed: list[Call] = []
    original_arm = interrupter.arm

    def arm(task_id: str, timeout: float | None) -> Call:
        armed.append(original_arm(task_id, timeout))
        return armed[-1]

    interrupter.arm = arm  # type: ignore[method-assign]

    def watcher() -> None:
        interrupter.prepare_watcher()
        while not armed:
            time.sleep(0.01)
        time.sleep(0.1)
        interrupter.interrupt(armed[0], TaskCanceled)

    thread = threading.Thread(target=watcher)
    thread.start()
    started = time.monotonic()
    interrupt = _blocked_read(interrupter, None)
    thread.join(5)
    assert isinstance(interrupt, Interrupt)
    assert interrupt.reason is TaskCanceled
    assert time.monotonic() - started < 1.0


def test_a_signal_after_disarm_raises_nothing_and_reaches_the_old_handler(
    sigalrm: list[int],
) -> None:
    interrupter = SignalInterrupter()
    call = interrupter.arm("task-1", None)
    interrupter.disarm(call)
    interrupter.interrupt(call, TaskCanceled)  # too late: not armed any more
    signal.pthread_kill(threading.get_ident(), signal.SIGALRM)  # a stray one
    time.sleep(0.01)
    assert call.reason is None
    assert sigalrm == [signal.SIGALRM], "the handler it replaced got the unarmed signal"


def test_a_signal_that_is_not_the_armed_calls_is_let_go(sigalrm: list[int]) -> None:
    interrupter = SignalInterrupter()
    call = interrupter.arm("task-1", 30)
    try:
        signal.pthread_kill(threading.get_ident(), signal.SIGALRM)  # e.g. a cancel sent too late
        time.sleep(0.01)
    finally:
        interrupter.disarm(call)
    assert call.reason is None
    assert not call.raised


def test_a_timer_set_before_is_resumed_after_disarm(sigalrm: list[int]) -> None:
    signal.setitimer(signal.ITIMER_REAL, 30)
    interrupter = SignalInterrupter()
    interrupter.disarm(interrupter.arm("task-1", 0.5))
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 29 < left <= 30
    signal.setitimer(signal.ITIMER_REAL, 0)
    interrupter.disarm(interrupter.arm("task-2", 0.5))
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0, "its own timer is cleared"


def test_the_signal_interrupter_refuses_other_threads() -> None:
    errors: list[BaseException] = []

    def arm() -> None:
        try:
            SignalInterrupter().arm("task-1", 1)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=arm)
    thread.start()
    thread.join(5)
    assert len(errors) == 1


def test_an_interrupted_model_call_is_not_a_connection_error_and_the_next_call_works(
    sigalrm: list[int],
) -> None:
    server = make_server(HOST, 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}).start()
    forwarder = Forwarder(
        ModelServerSettings(user_hostname=HOST, user_port=server.server_port),
        connect_timeout=2,
        read_timeout=10,
        pool_size=2,
    )
    interrupter = SignalInterrupter()
    try:
        assert forwarder({"args": {"n": 1}})["status_code"] == 200  # a kept-alive connection
        call = interrupter.arm("task-1", 0.2)
        started = time.monotonic()
        # Whatever requests and urllib3 make of other errors, this one reaches the task as is.
        with pytest.raises(Interrupt):
            try:
                forwarder({"args": {"delay": 3}})
            finally:
                interrupter.disarm(call)
        assert time.monotonic() - started < 1.0
        assert forwarder({"args": {"n": 2}})["result"] == '{"n": 2}'
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ gevent: greenlets


def test_greenlets_are_interrupted_by_the_deadline_and_by_a_cancel() -> None:
    gevent = pytest.importorskip("gevent")
    from gevent import socket as gsocket

    interrupter = GreenletInterrupter()
    calls: dict[str, Call] = {}

    def read(task_id: str, timeout: float | None) -> Any:
        left, right = gsocket.socketpair()
        calls[task_id] = call = interrupter.arm(task_id, timeout)
        try:
            try:
                left.recv(1)
            finally:
                interrupter.disarm(call)
        except Interrupt as interrupt:
            return interrupt.reason
        finally:
            left.close()
            right.close()
        return None

    started = time.monotonic()
    timed = gevent.spawn(read, "timed", 0.1)
    canceled = gevent.spawn(read, "canceled", None)
    gevent.sleep(0.2)
    interrupter.interrupt(calls["canceled"], TaskCanceled)
    gevent.joinall([timed, canceled], timeout=5)
    assert (timed.value, canceled.value) == (TaskDeadlineExceeded, TaskCanceled)
    assert time.monotonic() - started < 1.0
    # Disarmed: a late cancel is dropped in the hub, not thrown into whatever runs next.
    interrupter.interrupt(calls["timed"], TaskCanceled)
    gevent.sleep(0.05)
    assert calls["timed"].reason is TaskDeadlineExceeded


# --------------------------------------------------------------------------------- the watcher


class RecordingInterrupter:
    def __init__(self) -> None:
        self.interrupted: list[tuple[str, type[TaskStopped]]] = []

    def interrupt(self, call: Call, reason: type[TaskStopped]) -> None:
        self.interrupted.append((call.task_id, reason))

    def prepare_watcher(self) -> None:
        pass


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Any]:
    app = Celery("t", set_as_current=False)
    folder = tmp_path / "results"
    folder.mkdir()
    try:
        yield FilesystemBackend(app=app, url=f"file://{folder}")
    finally:
        app.close()


def test_the_watcher_interrupts_only_the_canceled_calls(backend: Any) -> None:
    interrupter = RecordingInterrupter()
    watcher = Watcher(lambda: backend, interrupter)  # type: ignore[arg-type]
    calls = [Call(task_id, None, None) for task_id in ("a", "b", "c")]
    for call in calls:
        watcher._calls.add(call)
    backend.set(backend.cancel_key("b"), "{}")
    calls[2].armed = False  # ended: never interrupted
    backend.set(backend.cancel_key("c"), "{}")
    watcher.poll()
    assert interrupter.interrupted == [("b", TaskCanceled)]


def test_the_watcher_thread_reads_markers_only_while_calls_run(backend: Any) -> None:
    reads: list[int] = []
    interrupter = RecordingInterrupter()

    class Counting:
        def canceled(self, task_ids: list[str]) -> list[bool]:
            reads.append(len(task_ids))
            return list(backend.canceled(task_ids))

    watcher = Watcher(Counting, interrupter)  # type: ignore[arg-type]
    call = Call("running", None, None)
    watcher.add(call)
    backend.set(backend.cancel_key("running"), "{}")
    deadline = time.monotonic() + 3
    while not interrupter.interrupted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert interrupter.interrupted == [("running", TaskCanceled)]
    watcher._calls.discard(call)
    time.sleep(0.6)  # a poll already under way may still run once
    settled = len(reads)
    time.sleep(1.2)
    assert len(reads) == settled, "the watcher kept reading with no call running"
    assert set(reads) == {1}


def test_a_failing_backend_is_logged_once_per_outage(
    backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    failing = [True]

    class Flaky:
        def canceled(self, task_ids: list[str]) -> list[bool]:
            if failing[0]:
                raise ConnectionError("backend down")
            return [False] * len(task_ids)

    watcher = Watcher(Flaky, RecordingInterrupter())  # type: ignore[arg-type]
    watcher._calls.add(Call("a", None, None))
    with caplog.at_level(logging.WARNING, logger="forwarder.worker.cancel_watch"):
        watcher.poll()
        watcher.poll()
        failing[0] = False
        watcher.poll()
        failing[0] = True
        watcher.poll()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["cannot read cancel markers: ConnectionError: backend down"] * 2


# ------------------------------------------------------------------------- a guarded model call


@pytest.fixture
def watch(backend: Any) -> CancelWatch:
    return CancelWatch(lambda: backend, SignalInterrupter)


@pytest.mark.parametrize(
    ("reason", "state", "message"),
    [
        (
            TaskDeadlineExceeded,
            TIMEOUT,
            "the model call took longer than its timeout_seconds=0.25; the call was abandoned",
        ),
        (TaskCanceled, "CANCELED", "canceled during its model call; the call was abandoned"),
    ],
)
def test_an_interrupted_call_raises_its_stopped_error(
    watch: CancelWatch,
    sigalrm: Any,
    reason: type[TaskStopped],
    state: str,
    message: str,
) -> None:
    before = signal.getitimer(signal.ITIMER_REAL)[0]  # pytest-timeout's, if it set one
    with (
        pytest.raises(TaskStopped) as caught,
        watch.guard("task-1", TaskLimits.parse(timeout_seconds=0.25)),
    ):
        raise Interrupt(reason)
    assert (type(caught.value), caught.value.state, str(caught.value)) == (reason, state, message)
    assert caught.value.__suppress_context__, "the Interrupt is not shown as its cause"
    assert not watch.watcher()._calls, "the call is no longer watched"
    assert before - 1 < signal.getitimer(signal.ITIMER_REAL)[0] <= before, "the timer was put back"


def test_a_call_that_ends_in_time_is_disarmed(watch: CancelWatch, sigalrm: Any) -> None:
    before = signal.getitimer(signal.ITIMER_REAL)[0]
    with watch.guard("task-1", TaskLimits.parse(timeout_seconds=5)):
        assert len(watch.watcher()._calls) == 1
        assert 4 < signal.getitimer(signal.ITIMER_REAL)[0] <= 5
    assert not watch.watcher()._calls
    assert before - 1 < signal.getitimer(signal.ITIMER_REAL)[0] <= before


def test_each_process_watches_with_its_own_watcher(
    watch: CancelWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = watch.watcher()
    assert watch.watcher() is parent
    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as seen by a forked child
    assert watch.watcher() is not parent


# ------------------------------------------------------------------------------------ the client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ForwarderClient]:
    """A client of the embedded broker in a temporary folder; no worker consumes."""
    forwarder_client = ForwarderClient(
        load_settings(env={}, flags={"--data-dir": str(tmp_path / "data")})
    )
    try:
        yield forwarder_client
    finally:
        forwarder_client.close()


def test_submit_sends_limits_in_kwargs_only_when_given(
    client: ForwarderClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict[str, Any]] = []

    def send_task(name: str, **options: Any) -> Any:
        sent.append(options)
        return SimpleNamespace(id=options.get("task_id") or "generated")

    monkeypatch.setattr(client.app, "send_task", send_task)
    assert client.submit({"args": {}}) == "generated"
    assert sent[0]["kwargs"] == {}, "without limits, the message is what it always was"
    assert len(sent[0]["args"]) == 2

    before = time.time()
    assert client.submit({"args": {}}, ttl_seconds=5, timeout_seconds=2, task_id="mine") == "mine"
    kwargs = sent[1]["kwargs"]
    assert (kwargs["ttl_seconds"], kwargs["timeout_seconds"]) == (5.0, 2.0)
    assert before <= kwargs["submitted_at"] <= time.time()

    with pytest.raises(PayloadError, match="ttl_seconds must be a positive number"):
        client.submit({"args": {}}, ttl_seconds=-1)
    assert len(sent) == 2, "a bad limit is refused before anything is sent"


def test_cancel_of_a_queued_task_stores_canceled_and_is_idempotent(
    client: ForwarderClient,
) -> None:
    task_id = client.submit({"args": {}})
    assert client.get(task_id).status == "PENDING"
    canceled = client.cancel(task_id)
    assert canceled.status == "CANCELED"
    assert canceled.ready
    assert canceled.error == "canceled before it started; not forwarded to the model server"
    assert client.cancel(task_id) == canceled
    backend = client.app.backend
    assert backend.get(backend.cancel_key(task_id)) is not None
    assert client.wait(task_id, timeout=1) == canceled


def test_cancel_of_a_running_task_leaves_the_marker_for_its_worker(
    client: ForwarderClient,
) -> None:
    backend = client.app.backend
    backend.store_result("running", {"pid": 1, "hostname": "w"}, "STARTED")
    assert client.cancel("running").status == "STARTED"
    assert backend.get(backend.cancel_key("running")) is not None


@pytest.mark.parametrize("state", ["SUCCESS", "FAILURE", EXPIRED, TIMEOUT])
def test_cancel_of_a_final_task_changes_nothing(client: ForwarderClient, state: str) -> None:
    backend = client.app.backend
    if state == "SUCCESS":
        backend.mark_as_done("done", {"result": "{}", "status_code": 200})
    elif state == "FAILURE":
        backend.mark_as_failure("done", PayloadError("bad payload"))
    else:
        backend.store_result("done", backend.prepare_exception(TaskStopped("stopped")), state)
    before = client.get("done")
    assert before.ready
    assert client.cancel("done") == before
    assert backend.get(backend.cancel_key("done")) is None


def test_celerys_revoked_reads_as_canceled(client: ForwarderClient) -> None:
    client.app.backend.mark_as_revoked("revoked", "revoked by hand")
    result = client.get("revoked")
    assert (result.status, result.ready) == ("CANCELED", True)
    assert result.error is not None and "revoked by hand" in result.error


@pytest.mark.parametrize("reason", [TaskCanceled, TaskDeadlineExceeded])
def test_an_interrupt_survives_pickling(reason: type[TaskStopped]) -> None:
    # A prefork child's exception reaches the worker process pickled; rebuilding it must work.
    copy = pickle.loads(pickle.dumps(Interrupt(reason)))
    assert copy.reason is reason
    assert str(copy) == reason.__name__
