"""The pure parts of queued callbacks: the retry schedule, the runner's decisions, the bodies,
rotation signatures, and the settings that must agree."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from forwarder.config.hooks import CallbackSettings, HookSettings, check_hook_settings
from forwarder.config.settings import load_settings
from forwarder.errors import ConfigError
from forwarder.hooks.base import TaskOutcome
from forwarder.hooks.deliveries.bodies import callback_body
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.deliveries.runner import DeliveryRunner, next_delay
from forwarder.hooks.deliveries.state import DeliveryState
from forwarder.hooks.delivery import Attempt, retryable
from forwarder.hooks.signing import signature_headers

SETTINGS = CallbackSettings(
    retry_window_seconds=100.0, delivery_backoff_seconds=1.0, delivery_backoff_max_seconds=8.0
)


def job(**changes: Any) -> DeliveryJob:
    base = DeliveryJob(task_id="t1", url="http://h:1/cb?token=x", body="{}", queue="q", stored_at=0)
    return DeliveryJob(**{**base.__dict__, **changes})


@pytest.mark.parametrize(
    ("status", "worth"),
    [
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (404, False),
        (410, False),
        (301, False),
    ],
)
def test_only_408_429_and_5xx_are_tried_again(status: int, worth: bool) -> None:
    assert retryable(status) is worth


def test_the_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    retry = Attempt(False, 503, "HTTP 503", retry=True)
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [
            next_delay(job(attempts=attempts, first_attempt_at=0), retry, 0, SETTINGS)
            for _ in range(50)
        ]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays), delays
        assert len(set(delays)) > 1  # jittered


def test_no_attempt_falls_outside_the_window_and_refusals_stop_at_once() -> None:
    retry = Attempt(False, 503, "HTTP 503", retry=True)
    assert next_delay(job(attempts=5, first_attempt_at=0), retry, 96.5, SETTINGS) is None
    assert next_delay(job(attempts=5, first_attempt_at=0), retry, 50.0, SETTINGS) is not None
    refused = Attempt(False, 404, "HTTP 404", retry=False)
    assert next_delay(job(attempts=1, first_attempt_at=0), refused, 0, SETTINGS) is None


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    slow = Attempt(False, 429, "HTTP 429", retry=True, retry_after="3")
    assert next_delay(job(attempts=1, first_attempt_at=0), slow, 0, SETTINGS) == 3.0
    late = Attempt(False, 429, "HTTP 429", retry=True, retry_after="600")
    assert next_delay(job(attempts=1, first_attempt_at=0), late, 0, SETTINGS) == 8.0


@dataclass
class FakeStore:
    states: dict[str, DeliveryState] = field(default_factory=dict)

    def get(self, task_id: str) -> DeliveryState | None:
        return self.states.get(task_id)

    def put(self, state: DeliveryState) -> None:
        self.states[state.task_id] = state


@dataclass
class FakeQueues:
    retried: list[tuple[DeliveryJob, float]] = field(default_factory=list)
    parked: list[DeliveryJob] = field(default_factory=list)

    def retry_later(self, job: DeliveryJob, countdown: float) -> None:
        self.retried.append((job, countdown))

    def park(self, job: DeliveryJob) -> None:
        self.parked.append(job)


@dataclass
class ScriptedSender:
    replies: list[Attempt]

    def send(self, job: DeliveryJob) -> Attempt:
        return self.replies.pop(0)


def runner(*replies: Attempt) -> tuple[DeliveryRunner, FakeStore, FakeQueues]:
    store, queues = FakeStore(), FakeQueues()
    run = DeliveryRunner(
        SETTINGS,
        ScriptedSender(list(replies)),
        store,
        queues,  # type: ignore[arg-type]
        clock=lambda: 10.0,
    )
    return run, store, queues


def test_a_retried_job_is_sent_again_with_its_count_and_the_state_says_when() -> None:
    run, store, queues = runner(Attempt(False, 503, "HTTP 503 ''", retry=True))
    assert run.run(job()) == "pending"
    ((again, countdown),) = queues.retried
    assert (again.attempts, again.first_attempt_at) == (1, 10.0)
    state = store.states["t1"]
    assert (state.status, state.attempts, state.last_status_code) == ("pending", 1, 503)
    assert state.next_attempt_at == pytest.approx(10.0 + countdown)
    assert state.receiver == "http://h:1"  # the origin only: the token stays out of the record
    assert not queues.parked


def test_a_refused_job_fails_at_once_and_is_parked_for_a_redelivery() -> None:
    run, store, queues = runner(Attempt(False, 404, "HTTP 404 'gone'"))
    assert run.run(job()) == "failed"
    assert [j.attempts for j in queues.parked] == [1]
    assert not queues.retried
    assert store.states["t1"].last_error == "HTTP 404 'gone'"


def test_a_copy_of_a_delivered_job_is_dropped_without_an_attempt() -> None:
    run, store, _ = runner()  # no reply scripted: an attempt would fail the test
    store.put(DeliveryState("t1", "delivered", "http://h:1", 0.0, attempts=1))
    assert run.run(job()) == "delivered"


def outcome(**changes: Any) -> TaskOutcome:
    fields: dict[str, Any] = {
        "task_id": "t9",
        "queue": "q",
        "request": {},
        "succeeded": True,
        "result": {"result": "big", "status_code": 201},
    }
    return TaskOutcome(**{**fields, **changes})


def test_a_notify_body_says_where_the_result_is_and_not_what_it_is() -> None:
    notify = CallbackSettings(
        body="notify", result_url="https://gw.example/v1/async-tasks/{task_id}"
    )
    assert json.loads(callback_body(outcome(), notify)) == {
        "task_id": "t9",
        "status": "SUCCESS",
        "status_code": 201,
        "result_url": "https://gw.example/v1/async-tasks/t9",
    }
    failed = outcome(succeeded=False, result=None, error="X: y", status="TIMEOUT")
    assert json.loads(callback_body(failed, CallbackSettings(body="notify"))) == {
        "task_id": "t9",
        "status": "TIMEOUT",
    }
    assert json.loads(callback_body(outcome(), CallbackSettings()))["result"] == "big"


def test_every_key_signs_each_call() -> None:
    keys = [b"old-key", b"new-key"]
    headers = signature_headers(keys, "t1", b"{}")
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{{}}".encode()
    expected = [
        "v1," + base64.b64encode(hmac.digest(k, signed, hashlib.sha256)).decode() for k in keys
    ]
    assert headers["webhook-signature"].split() == expected
    assert headers["webhook-id"] == "msg_t1"


def test_signing_secrets_come_as_one_or_a_list() -> None:
    one = load_settings(env={}, overrides=["callback.signing_secret=abc"]).hooks.callback
    two = load_settings(env={}, overrides=["callback.signing_secret=[abc, def]"]).hooks.callback
    assert (one.signing_secrets, two.signing_secrets) == (("abc",), ("abc", "def"))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (
            {"delivery_backoff_seconds": 10.0, "delivery_backoff_max_seconds": 5.0},
            "callback.delivery_backoff_max_seconds",
        ),
        (
            {"delivery_backoff_max_seconds": 100.0, "delivery_visibility_seconds": 50.0},
            "callback.delivery_visibility_seconds",
        ),
        ({"result_url": "https://gw.example/tasks"}, "callback.result_url"),
    ],
)
def test_delivery_settings_that_disagree_stop_start_up(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_hook_settings(HookSettings(callback=CallbackSettings(**changes)))
    assert raised.value.key == key


def test_bad_delivery_values_are_named() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides=["callback.delivery=later"])
    assert raised.value.key == "callback.delivery"
    assert "queued" in str(raised.value)


def test_a_queued_callback_carries_no_configured_credential() -> None:
    from forwarder.config.hooks import BasicAuth
    from forwarder.hooks.callback import CallbackHook

    jobs: list[DeliveryJob] = []
    settings = CallbackSettings(
        default_url="https://receiver.example/cb",
        default_auth=BasicAuth("svc", "configured-password"),
    )
    hook = CallbackHook(settings, enqueue=jobs.append)
    hook(outcome(request={}))
    own = {"kind": "basic", "username": "u", "password": "own-password"}
    hook(
        outcome(
            task_id="t10", request={"callback_url": "https://other.example/x", "callback_auth": own}
        )
    )
    hook(outcome(task_id="t11", request={"callback_url": "https://other.example/x"}))
    default, with_own, elsewhere = jobs
    assert (default.default_auth, default.auth) == (True, None)
    assert "configured-password" not in repr(default.as_kwargs())
    assert (with_own.default_auth, with_own.auth) == (False, own)
    # Another origin never gets the configured credentials.
    assert (elsewhere.default_auth, elsewhere.auth) == (False, None)
    assert json.loads(default.body)["task_id"] == "t9"
