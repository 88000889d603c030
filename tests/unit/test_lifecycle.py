"""A task's lifecycle, driven without a Celery app or worker: a fake task, fake model calls.

Each test runs against an in-memory result backend and against the forwarder's real file backend
in a temporary folder, so the pipeline meets the same bar whichever backend it talks to. The
interrupter is a recording one: a model call "interrupted" raises ``Interrupt`` itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
from celery import Celery
from celery.exceptions import Ignore

from forwarder.celery_ext.backends.base import Admission, StartingTask
from forwarder.celery_ext.backends.filesystem import FilesystemBackend
from forwarder.errors import (
    DeadLettered,
    ModelServerUnavailable,
    PayloadError,
    TaskCanceled,
    TaskDeadlineExceeded,
    TaskStopped,
)
from forwarder.hooks import Hook, HookRunner, TaskOutcome
from forwarder.observability import metrics
from forwarder.protocol import (
    CANCELED,
    COMPLETED_STATES,
    EXPIRED,
    FAILURE,
    LIRA_TASK_NAME,
    SUCCESS,
    TIMEOUT,
)
from forwarder.worker.cancel_watch import CancelWatch
from forwarder.worker.crash_loop import CrashLoopGuard
from forwarder.worker.interrupts import Call, Interrupt
from forwarder.worker.lifecycle import Outcome, TaskLifecycle
from forwarder.worker.retry import RetryPolicy

QUEUE = "inference"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class MemoryBackend:
    """The result backend as the lifecycle asks it, in memory, with the same admission rules."""

    def __init__(self) -> None:
        self.markers: set[str] = set()
        self.counts: Counter[tuple[str, int]] = Counter()
        self.states: dict[str, tuple[str, Any]] = {}

    def admit(self, task_id: str, retries: int, starting: StartingTask | None) -> Admission:
        stored = self.states.get(task_id, ("PENDING", None))[0]
        if stored in COMPLETED_STATES:
            return Admission(False, 0, completed=stored)
        self.counts[task_id, retries] += 1
        admission = Admission(task_id in self.markers, self.counts[task_id, retries])
        if starting is not None and admission.may_start(starting.max_deliveries):
            self.states[task_id] = ("STARTED", starting.result)
            admission = replace(admission, started_stored=True)
        return admission

    def store_stopped(self, task_id: str, error: TaskStopped, request: Any = None) -> None:
        self.states[task_id] = (error.state, error)

    def canceled(self, task_ids: list[str]) -> list[bool]:
        return [task_id in self.markers for task_id in task_ids]


class Store:
    """One backend under test, read back the same way whichever it is."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def cancel(self, task_id: str) -> None:
        if isinstance(self.backend, MemoryBackend):
            self.backend.markers.add(task_id)
        else:
            self.backend.set(self.backend.cancel_key(task_id), "{}")

    def store(self, task_id: str, state: str, value: Any) -> None:
        """What Celery stores at a task's end."""
        if isinstance(self.backend, MemoryBackend):
            self.backend.states[task_id] = (state, value)
        else:
            self.backend.store_result(task_id, value, state)

    def state(self, task_id: str) -> str:
        if isinstance(self.backend, MemoryBackend):
            return self.backend.states.get(task_id, ("PENDING", None))[0]
        return str(self.backend.get_task_meta(task_id)["status"])


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield Store(MemoryBackend())
        return
    app = Celery("t", set_as_current=False)
    folder = tmp_path / "results"
    folder.mkdir()
    try:
        yield Store(FilesystemBackend(app=app, url=f"file://{folder}"))
    finally:
        app.close()


class Retried(Exception):
    """What the fake task's ``retry`` raises, as Celery's raises ``Retry``."""


class Producer:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, body: Any, **options: Any) -> None:
        self.published.append(body)


@dataclass
class FakeTask:
    backend: Any
    request: Any
    name: str = LIRA_TASK_NAME
    retried: list[float] = field(default_factory=list)
    producer: Producer = field(default_factory=Producer)

    @property
    def app(self) -> Any:
        return SimpleNamespace(producer_or_acquire=lambda: contextlib.nullcontext(self.producer))

    def retry(self, exc: BaseException, countdown: float) -> NoReturn:
        self.retried.append(countdown)
        raise Retried(str(exc))


def make_task(store: Store, *, retries: int = 0, kwargs: dict[str, Any] | None = None) -> FakeTask:
    request = SimpleNamespace(
        id="task-1",
        hostname="w@host",
        args=[{"args": {"x": 1}}, None],
        kwargs=dict(kwargs or {}),
        retries=retries,
    )
    return FakeTask(store.backend, request)


class FakeInterrupter:
    """Arms and disarms calls; the watcher never interrupts on its own here."""

    def __init__(self) -> None:
        self.armed: list[Call] = []

    def arm(self, task_id: str, timeout: float | None) -> Call:
        call = Call(task_id, None, timeout)
        self.armed.append(call)
        return call

    def disarm(self, call: Call) -> None:
        call.armed = False

    def interrupt(self, call: Call, reason: type[TaskStopped]) -> None:
        call.reason = reason

    def prepare_watcher(self) -> None:
        pass


class Recording(Hook):
    name = "recording"

    def __init__(self) -> None:
        self.outcomes: list[TaskOutcome] = []

    def __call__(self, outcome: TaskOutcome) -> None:
        self.outcomes.append(outcome)


class Metrics(metrics.Recorder):
    def __init__(self) -> None:
        self.finished: list[str] = []
        self.skipped: list[str] = []
        self.received = 0
        self.in_flight_total = 0

    def task_received(self, queue: str, wait_seconds: float | None, stuck: bool) -> None:
        self.received += 1

    def task_finished(self, queue: str, status: str) -> None:
        assert queue == QUEUE
        self.finished.append(status)

    def in_flight(self, queue: str, delta: int) -> None:
        self.in_flight_total += delta

    def redelivery_skipped(self, queue: str, status: str) -> None:
        assert queue == QUEUE
        self.skipped.append(status)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    recorder = Metrics()
    monkeypatch.setattr(metrics, "_recorder", recorder)
    return recorder


@dataclass
class Pipeline:
    lifecycle: TaskLifecycle
    hook: Recording
    interrupter: FakeInterrupter
    sent: list[tuple[Any, Mapping[str, str]]]


def pipeline(
    store: Store,
    model_call: Callable[[Any, Mapping[str, str], Any], Any] | None = None,
    *,
    max_deliveries: int = 5,
    retries: int = 2,
) -> Pipeline:
    hook = Recording()
    interrupter = FakeInterrupter()
    sent: list[tuple[Any, Mapping[str, str]]] = []

    def answer(payload: Any, headers: Mapping[str, str], events: Any) -> Any:
        sent.append((payload, headers))
        return {"result": "{}", "status_code": 200}

    lifecycle = TaskLifecycle(
        queue=QUEUE,
        visibility_timeout=60,
        model_call=model_call or answer,
        crash_loop=CrashLoopGuard(max_deliveries, QUEUE, f"{QUEUE}-dead-letter"),
        cancel_watch=CancelWatch(lambda: store.backend, lambda: interrupter),
        retry=RetryPolicy(retries, 30.0, QUEUE),
        hooks=HookRunner([hook]),
    )
    return Pipeline(lifecycle, hook, interrupter, sent)


def run(pipe: Pipeline, task: FakeTask, **extra: Any) -> Any:
    """What the Celery task does: the pipeline, then the end Celery's after_return would call."""
    payload, arrival = task.request.args
    try:
        value = pipe.lifecycle.run(task, payload, arrival, (), {**task.request.kwargs, **extra})
    except (Ignore, Retried):
        raise
    except Exception as exc:
        pipe.lifecycle.finish(task, Outcome(FAILURE, exc))
        raise
    pipe.lifecycle.finish(task, Outcome(SUCCESS, value))
    return value


# ------------------------------------------------------------------------------------- success


def test_a_task_is_admitted_forwarded_and_finished_once(store: Store, recorded: Metrics) -> None:
    pipe = pipeline(store)
    task = make_task(store, kwargs={"traceparent": TRACEPARENT, "timeout_seconds": 5})
    assert run(pipe, task) == {"result": "{}", "status_code": 200}
    [(payload, headers)] = pipe.sent
    assert payload == {"args": {"x": 1}}
    assert headers == {"traceparent": TRACEPARENT}
    assert store.state("task-1") == "STARTED", "Celery stores SUCCESS itself, not the pipeline"
    [call] = pipe.interrupter.armed
    assert (call.deadline, call.armed) == (5.0, False), "bounded by timeout_seconds, then disarmed"
    assert not pipe.lifecycle.cancel_watch.watcher()._calls
    [outcome] = pipe.hook.outcomes
    assert (outcome.status, outcome.succeeded, outcome.queue) == (SUCCESS, True, QUEUE)
    assert outcome.request == {"args": {"x": 1}}
    assert outcome.trace_headers == {"traceparent": TRACEPARENT}
    assert recorded.finished == ["success"]
    assert (recorded.received, recorded.in_flight_total) == (1, 0)


def test_unknown_arguments_are_ignored_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = pipeline(store)
    task = make_task(store)
    with caplog.at_level(logging.WARNING, logger="forwarder.worker.lifecycle"):
        pipe.lifecycle.run(task, {"args": {}}, None, ("extra",), {"priority": 1, "user": "x"})
    assert [r.getMessage() for r in caplog.records] == [
        "task task-1: ignoring 1 extra positional argument(s)",
        "task task-1: ignoring keyword argument(s) ['priority', 'user']",
    ]
    assert len(pipe.sent) == 1


def test_a_bad_limit_fails_the_task_before_admission(store: Store, recorded: Metrics) -> None:
    pipe = pipeline(store)
    with pytest.raises(PayloadError, match="timeout_seconds must be a positive number"):
        run(pipe, make_task(store, kwargs={"timeout_seconds": -1}))
    assert store.state("task-1") == "PENDING", "not admitted: no delivery counted, no STARTED"
    assert pipe.sent == []
    assert [o.status for o in pipe.hook.outcomes] == [FAILURE]
    assert recorded.finished == ["failure"]


@pytest.mark.parametrize("state", [SUCCESS, FAILURE])
def test_a_redelivery_of_a_completed_task_is_acknowledged_and_not_run_again(
    store: Store, recorded: Metrics, caplog: pytest.LogCaptureFixture, state: str
) -> None:
    pipe = pipeline(store)
    task = make_task(store)
    first = run(pipe, task)
    store.store("task-1", state, first if state == SUCCESS else PayloadError("bad"))
    with caplog.at_level(logging.INFO, logger="forwarder.worker.lifecycle"), pytest.raises(Ignore):
        run(pipe, make_task(store))
    assert len(pipe.sent) == 1, "the model is called once"
    assert [o.status for o in pipe.hook.outcomes] == [SUCCESS], "the hooks ran for the first only"
    assert store.state("task-1") == state, "nothing stored over the first run's result"
    assert recorded.finished == ["success"]
    assert recorded.skipped == [state.lower()]
    assert recorded.in_flight_total == 0
    assert caplog.messages == [
        f"task task-1: already {state}, redelivery acknowledged without running it again"
    ]


def test_a_client_canceled_queued_task_still_ends_with_its_hooks(store: Store) -> None:
    pipe = pipeline(store)
    store.cancel("task-1")
    store.backend.store_stopped("task-1", TaskCanceled("canceled"))
    with pytest.raises(Ignore):
        run(pipe, make_task(store))
    assert [o.status for o in pipe.hook.outcomes] == [CANCELED]


# ------------------------------------------------------------------------------------ stopped


def test_a_canceled_task_is_stored_canceled_and_never_forwarded(
    store: Store, recorded: Metrics
) -> None:
    pipe = pipeline(store)
    store.cancel("task-1")
    with pytest.raises(Ignore):
        run(pipe, make_task(store))
    assert store.state("task-1") == CANCELED
    assert pipe.sent == []
    [outcome] = pipe.hook.outcomes
    assert outcome.status == CANCELED and not outcome.succeeded
    assert outcome.error == (
        "TaskCanceled: canceled before it started; not forwarded to the model server"
    )
    assert recorded.finished == ["canceled"]


def test_an_expired_task_is_stored_expired(store: Store, recorded: Metrics) -> None:
    pipe = pipeline(store)
    with pytest.raises(Ignore):
        run(pipe, make_task(store, kwargs={"ttl_seconds": 1, "submitted_at": 0}))
    assert store.state("task-1") == EXPIRED
    assert pipe.sent == []
    assert [o.status for o in pipe.hook.outcomes] == [EXPIRED]
    assert recorded.finished == ["expired"]


def test_a_canceled_task_stays_canceled_once_expired(store: Store) -> None:
    pipe = pipeline(store)
    store.cancel("task-1")
    with pytest.raises(Ignore):
        run(pipe, make_task(store, kwargs={"ttl_seconds": 1, "submitted_at": 0}))
    assert store.state("task-1") == CANCELED


def test_the_delivery_past_the_cap_is_dead_lettered(store: Store, recorded: Metrics) -> None:
    pipe = pipeline(store, max_deliveries=2)
    task = make_task(store)
    for _ in range(2):
        run(pipe, task)
    with pytest.raises(Ignore):
        run(pipe, task)
    assert store.state("task-1") == FAILURE
    assert len(pipe.sent) == 2
    assert len(task.producer.published) == 1
    assert [o.status for o in pipe.hook.outcomes] == [SUCCESS, SUCCESS, FAILURE]
    assert pipe.hook.outcomes[-1].error is not None
    assert pipe.hook.outcomes[-1].error.startswith(DeadLettered.__name__)
    assert recorded.finished == ["success", "success", "failure"]


@pytest.mark.parametrize(
    ("reason", "state", "message"),
    [
        (
            TaskDeadlineExceeded,
            TIMEOUT,
            "the model call took longer than its timeout_seconds=0.25; the call was abandoned",
        ),
        (TaskCanceled, CANCELED, "canceled during its model call; the call was abandoned"),
    ],
)
def test_an_interrupted_call_ends_stopped_once(
    store: Store, recorded: Metrics, reason: type[TaskStopped], state: str, message: str
) -> None:
    def interrupted(payload: Any, headers: Mapping[str, str], events: Any) -> Any:
        raise Interrupt(reason)

    pipe = pipeline(store, interrupted)
    with pytest.raises(Ignore):
        run(pipe, make_task(store, kwargs={"timeout_seconds": 0.25}))
    assert store.state("task-1") == state
    [outcome] = pipe.hook.outcomes
    assert (outcome.status, outcome.error) == (state, f"{reason.__name__}: {message}")
    assert not pipe.interrupter.armed[0].armed
    assert not pipe.lifecycle.cancel_watch.watcher()._calls, "the call is no longer watched"
    assert recorded.finished == [state.lower()]
    assert recorded.in_flight_total == 0


# -------------------------------------------------------------------------------------- retry


def test_an_unreachable_model_server_sends_the_task_back_then_gives_up(
    store: Store, recorded: Metrics
) -> None:
    def unreachable(payload: Any, headers: Mapping[str, str], events: Any) -> Any:
        raise ModelServerUnavailable("cannot connect to model server at http://m")

    pipe = pipeline(store, unreachable, retries=2)
    for retries in range(2):
        task = make_task(store, retries=retries)
        with pytest.raises(Retried):
            run(pipe, task)
        [countdown] = task.retried
        assert 0.5 * 2**retries <= countdown <= 2**retries
    assert pipe.hook.outcomes == [], "a retry is not final: no hooks"
    with pytest.raises(ModelServerUnavailable) as caught:
        run(pipe, make_task(store, retries=2))
    assert str(caught.value) == (
        "cannot connect to model server at http://m; gave up after 3 attempt(s)"
    )
    assert caught.value.__suppress_context__
    assert [o.status for o in pipe.hook.outcomes] == [FAILURE]
    assert recorded.finished == ["retry", "retry", "failure"]


# -------------------------------------------------------------------------------------- finish


def test_finish_stores_only_what_celery_has_not(store: Store) -> None:
    pipe = pipeline(store)
    task = make_task(store)
    pipe.lifecycle.finish(task, Outcome(FAILURE, PayloadError("bad")))
    assert store.state("task-1") == "PENDING", "Celery stores its own FAILURE"
    pipe.lifecycle.finish(task, Outcome.stopped(TaskCanceled("canceled")))
    assert store.state("task-1") == CANCELED
    assert [o.error for o in pipe.hook.outcomes] == [
        "PayloadError: bad",
        "TaskCanceled: canceled",
    ]


def test_without_hooks_finish_still_counts(store: Store, recorded: Metrics) -> None:
    lifecycle = replace(pipeline(store).lifecycle, hooks=None)
    lifecycle.finish(make_task(store), Outcome(SUCCESS, {"result": "{}"}))
    assert recorded.finished == ["success"]
