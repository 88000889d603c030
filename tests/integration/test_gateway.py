"""The gateway end to end: real uvicorn, real workers (prefork and gevent), redis-server and the
echo model server, all on 127.0.0.1.

Two stacks share one Redis database: gateway A (bearer tokens, a 4 KiB body limit) in front of a
prefork worker, gateway B (no auth) in front of a gevent worker, each worker with two slots on
its own queue. The echo server's request counter tells whether a task reached the model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_spec_validator import validate
from pydantic import BaseModel, ConfigDict

from forwarder.client.gateway import GatewayClient
from forwarder.devtools.localrun import free_port
from forwarder.errors import ClientError, GatewayError
from forwarder.protocol import LIRA_TASK_NAME
from support.echo import EchoServer
from support.env import base_env
from support.processes import Processes
from support.workers import Worker

pytestmark = pytest.mark.integration

TOKEN = "gw-test-token-0123456789"
MAX_BODY = 4096
FINAL = {"SUCCESS", "FAILURE", "EXPIRED", "TIMEOUT", "CANCELED"}
BLOCKER_DELAY = 1.5


# model-engine's response models, field for field (common/dtos/tasks.py), strict about extras so
# that any drift in the shapes fails here.
class MeTaskStatus(str, Enum):  # noqa: UP042 - as model-engine declares it
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    UNDEFINED = "UNDEFINED"


class MeCreateAsyncTaskV1Response(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str


class MeGetAsyncTaskV1Response(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    status: MeTaskStatus
    result: Any = None
    traceback: str | None = None
    status_code: int | None = None


@dataclass
class Stack:
    url: str
    pool: str
    headers: dict[str, str]
    http: requests.Session

    def submit(self, body: dict[str, Any], **headers: str) -> str:
        reply = self.http.post(
            f"{self.url}/v1/async-tasks", json=body, headers={**self.headers, **headers}, timeout=10
        )
        assert reply.status_code == 200, reply.text
        return str(reply.json()["task_id"])

    def get(self, task_id: str) -> dict[str, Any]:
        reply = self.http.get(
            f"{self.url}/v1/async-tasks/{task_id}", headers=self.headers, timeout=10
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def cancel(self, task_id: str) -> dict[str, Any]:
        reply = self.http.post(
            f"{self.url}/v1/async-tasks/{task_id}/cancel", headers=self.headers, timeout=10
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def poll(
        self, task_id: str, until: set[str] = FINAL, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Every state read until one in ``until``; fails after ``timeout`` seconds."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.get(task_id))
            if seen[-1]["status"] in until:
                return seen
            if time.monotonic() >= deadline:
                pytest.fail(f"task {task_id} still {seen[-1]['status']} after {timeout:g} s")
            time.sleep(0.05)


@dataclass
class Stacks:
    a: Stack
    b: Stack
    echo: EchoServer
    redis_url: str
    workers: dict[str, Worker]

    def model_calls(self) -> int:
        return int(self.echo.stats()["predict_requests"])


@pytest.fixture(scope="module")
def stacks(module_procs: Processes, module_redis_url: str) -> Iterator[Stacks]:
    echo = module_procs.echo()
    workers = {
        pool: module_procs.worker(
            model_port=echo.port,
            pool=pool,
            queue=f"gw-{pool}",
            broker_url=module_redis_url,
            concurrency=2,
            wait=False,
        )
        for pool in ("prefork", "gevent")
    }
    a = module_procs.gateway(
        broker_url=module_redis_url,
        queue="gw-prefork",
        sets=[f"gateway.max_body_bytes={MAX_BODY}"],
        env={"FORWARDER_GATEWAY_TOKENS": TOKEN},
    )
    b = module_procs.gateway(broker_url=module_redis_url, queue="gw-gevent")
    for worker in workers.values():
        worker.wait_ready()
    sessions = [requests.Session(), requests.Session()]
    yield Stacks(
        a=Stack(a.url, "prefork", {"Authorization": f"Bearer {TOKEN}"}, sessions[0]),
        b=Stack(b.url, "gevent", {}, sessions[1]),
        echo=echo,
        redis_url=module_redis_url,
        workers=workers,
    )
    for session in sessions:
        session.close()


@pytest.fixture(params=["prefork", "gevent"])
def stack(request: pytest.FixtureRequest, stacks: Stacks) -> Stack:
    return stacks.a if request.param == "prefork" else stacks.b


def _fill_both_slots(stack: Stack) -> list[str]:
    """Two tasks that hold the worker's two slots for BLOCKER_DELAY seconds, once both started."""
    blockers = [stack.submit({"args": {"delay": BLOCKER_DELAY, "n": n}}) for n in range(2)]
    for task_id in blockers:
        stack.poll(task_id, until={"STARTED", *FINAL}, timeout=10)
    return blockers


# ------------------------------------------------------------------------------ model-engine


def test_submit_then_poll_reaches_success_in_model_engine_shapes(stacks: Stacks) -> None:
    args = {"prompt": "hello", "delay": 0.4}
    reply = stacks.a.http.post(
        f"{stacks.a.url}/v1/async-tasks", json={"args": args}, headers=stacks.a.headers, timeout=10
    )
    assert reply.status_code == 200
    created = MeCreateAsyncTaskV1Response.model_validate_json(reply.text)
    seen = stacks.a.poll(created.task_id)
    statuses = [state["status"] for state in seen]
    assert "STARTED" in statuses, statuses
    assert set(statuses) <= {"PENDING", "STARTED", "SUCCESS"}, statuses
    final = seen[-1]
    assert list(final) == ["task_id", "status", "result", "traceback", "status_code"]
    assert final["status"] == "SUCCESS"
    assert final["status_code"] == 200
    assert final["traceback"] is None
    # The stored {"result": <reply as a JSON string>, "status_code": 200}, status_code lifted.
    assert list(final["result"]) == ["result"]
    assert json.loads(final["result"]["result"]) == args
    for state in seen:
        MeGetAsyncTaskV1Response.model_validate(state)


def test_a_non_2xx_reply_and_a_failure_read_as_model_engine_reads_them(stacks: Stacks) -> None:
    not_found = stacks.a.poll(stacks.a.submit({"args": {"status_code": 404}}))[-1]
    assert (not_found["status"], not_found["status_code"]) == ("SUCCESS", 404)
    failed = stacks.a.poll(stacks.a.submit({"args": {"raw_text": "not json"}}))[-1]
    assert failed["status"] == "FAILURE"
    assert (failed["result"], failed["status_code"]) == (None, None)
    assert "not JSON" in failed["traceback"]
    MeGetAsyncTaskV1Response.model_validate(failed)


def test_a_task_goes_under_the_lira_name_to_the_configured_queue(stacks: Stacks) -> None:
    # Gateway B serves gw-gevent, which only the gevent worker consumes.
    task_id = stacks.b.submit({"args": {"where": "b"}})
    assert stacks.b.poll(task_id)[-1]["status"] == "SUCCESS"
    received = f"Task {LIRA_TASK_NAME}[{task_id}] received"
    assert received in stacks.workers["gevent"].log()
    assert task_id not in stacks.workers["prefork"].log()


# --------------------------------------------------------------------------- TTL and deadline


def test_a_task_past_its_ttl_is_expired_and_never_reaches_the_model(stacks: Stacks) -> None:
    before = stacks.model_calls()
    blockers = _fill_both_slots(stacks.a)
    late = stacks.a.submit({"args": {"late": True}, "ttl_seconds": 0.3})
    final = stacks.a.poll(late, timeout=15)[-1]
    for task_id in blockers:
        assert stacks.a.poll(task_id)[-1]["status"] == "SUCCESS"
    assert final["status"] == "EXPIRED"
    assert final["result"] is None and final["traceback"]
    assert stacks.model_calls() - before == 2  # the blockers only


def test_a_deadline_ends_a_long_model_call_as_timeout(stack: Stack, stacks: Stacks) -> None:
    started = time.monotonic()
    task_id = stack.submit({"args": {"delay": 5}, "timeout_seconds": 0.5})
    final = stack.poll(task_id, timeout=10)[-1]
    assert final["status"] == "TIMEOUT"
    assert time.monotonic() - started < 4.0  # abandoned, not waited out
    # The slot is free again at once: a quick task after it succeeds.
    assert (
        stack.poll(stack.submit({"args": {"after": "timeout"}}), timeout=5)[-1]["status"]
        == "SUCCESS"
    )


# ------------------------------------------------------------------------------------ cancel


def test_a_canceled_queued_task_never_runs(stacks: Stacks) -> None:
    before = stacks.model_calls()
    blockers = _fill_both_slots(stacks.a)
    queued = stacks.a.submit({"args": {"queued": True}})
    first = stacks.a.cancel(queued)
    again = stacks.a.cancel(queued)
    assert first["status"] == again["status"] == "CANCELED"
    for task_id in blockers:
        stacks.a.poll(task_id)
    time.sleep(0.5)  # room for the worker to take the canceled message and drop it
    assert stacks.a.get(queued)["status"] == "CANCELED"
    assert stacks.model_calls() - before == 2


def test_a_canceled_running_task_is_abandoned(stack: Stack) -> None:
    task_id = stack.submit({"args": {"delay": 5}})
    stack.poll(task_id, until={"STARTED"}, timeout=10)
    started = time.monotonic()
    assert stack.cancel(task_id)["status"] in ("STARTED", "CANCELED")
    final = stack.poll(task_id, timeout=5)[-1]
    assert final["status"] == "CANCELED"
    assert time.monotonic() - started < 3.0
    assert stack.cancel(task_id) == final  # idempotent


def test_canceling_a_finished_task_keeps_its_result(stacks: Stacks) -> None:
    task_id = stacks.a.submit({"args": {"done": 1}})
    final = stacks.a.poll(task_id)[-1]
    assert stacks.a.cancel(task_id) == final


# ------------------------------------------------------------------------------- idempotency


def test_twenty_concurrent_identical_submits_make_one_task(stacks: Stacks) -> None:
    before = stacks.model_calls()
    key = f"order-{uuid.uuid4()}"
    body = {"args": {"idempotent": key}}
    barrier = threading.Barrier(20)

    def one(_: int) -> requests.Response:
        with requests.Session() as session:
            barrier.wait(timeout=10)
            return session.post(
                f"{stacks.a.url}/v1/async-tasks",
                json=body,
                headers={**stacks.a.headers, "Idempotency-Key": key},
                timeout=10,
            )

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(one, range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    task_ids = {r.json()["task_id"] for r in replies}
    assert len(task_ids) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in replies) == 1
    assert stacks.a.poll(task_ids.pop())[-1]["status"] == "SUCCESS"
    time.sleep(0.5)  # a second copy, had one been queued, would have run by now
    assert stacks.model_calls() - before == 1


# ------------------------------------------------------------------------------------ limits


def test_limits_and_auth_on_the_real_gateway(stacks: Stacks) -> None:
    url, auth, http = f"{stacks.a.url}/v1/async-tasks", stacks.a.headers, stacks.a.http
    too_big = http.post(url, json={"args": "x" * MAX_BODY}, headers=auth, timeout=10)
    assert too_big.status_code == 413
    assert f"{MAX_BODY} bytes" in too_big.json()["detail"]
    text = http.post(url, data="hello", headers={**auth, "Content-Type": "text/plain"}, timeout=10)
    assert text.status_code == 415
    invalid = http.post(url, json={"args": 1, "ttl_seconds": -5}, headers=auth, timeout=10)
    assert invalid.status_code == 422
    assert ["body", "ttl_seconds"] in [e["loc"] for e in invalid.json()["detail"]]
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
        assert http.post(url, json={"args": 1}, headers=headers, timeout=10).status_code == 401
        assert http.get(f"{url}/x", headers=headers, timeout=10).status_code == 401
    # model-engine's clients: the token as the Basic user name.
    task_id = http.post(url, json={"args": 1}, auth=(TOKEN, ""), timeout=10).json()["task_id"]
    assert http.get(f"{url}/{task_id}", auth=(TOKEN, ""), timeout=10).status_code == 200
    # An id this gateway never issued: the same 404 as another caller's task.
    assert http.get(f"{url}/x", auth=(TOKEN, ""), timeout=10).status_code == 404


def test_health_readiness_and_the_openapi_document(stacks: Stacks, procs: Processes) -> None:
    http = stacks.a.http
    assert http.get(f"{stacks.a.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert http.get(f"{stacks.a.url}/readyz", timeout=10).json() == {"status": "ready"}
    docs = http.get(f"{stacks.a.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    validate(http.get(f"{stacks.a.url}/openapi.json", timeout=10).json())
    # A gateway whose broker does not answer: alive, not ready.
    dead = procs.gateway(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert http.get(f"{dead.url}/healthz", timeout=10).status_code == 200
    not_ready = http.get(f"{dead.url}/readyz", timeout=15)
    assert not_ready.status_code == 503
    assert not_ready.json() == {"detail": "the broker did not answer"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error(
    procs: Processes, module_redis_url: str, tmp_path: Path
) -> None:
    # A gateway of its own, on a queue no worker consumes: what is checked is the gateway's
    # answers to generated requests, and a queue left full touches no other test.
    gateway = procs.gateway(
        broker_url=module_redis_url,
        queue="gw-generated",
        sets=[f"gateway.max_body_bytes={MAX_BODY}"],
        env={"FORWARDER_GATEWAY_TOKENS": TOKEN},
    )
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{gateway.url}/openapi.json",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", ",".join(checks),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "100",
        "--seed", "1",
        # One: CPython 3.11's ast.parse, which hypothesis calls, is not safe in parallel threads
        # ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--request-timeout", "10",
        # A task's events stream until the task ends, and no generated task ever does; the
        # route's refusals are checked in tests/integration/test_streaming.py.
        "--exclude-path", "/v1/async-tasks/{task_id}/events",
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=270, check=False, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    # Six operations: submit, get, cancel, callback redeliver, healthz, readyz.
    assert re.search(r"Fuzzing .*\n\s*\n\s*✅ 6 passed", completed.stdout), completed.stdout


# ------------------------------------------------------------------------- client and CLI


def test_the_python_gateway_client(stacks: Stacks) -> None:
    with GatewayClient(stacks.a.url, TOKEN) as client:
        task_id = client.submit({"args": {"via": "client"}}, timeout_seconds=10)
        result = client.wait(task_id, timeout=15)
        assert (result.status, result.status_code, result.ready) == ("SUCCESS", 200, True)
        assert json.loads(result.result["result"]) == {"via": "client"}
        key = f"client-{uuid.uuid4()}"
        assert client.submit({"args": 1}, idempotency_key=key) == client.submit(
            {"args": 1}, idempotency_key=key
        )
        slow = client.submit({"args": {"delay": 5}})
        client.cancel(slow)
        assert client.wait(slow, timeout=10).status == "CANCELED"
        expired = client.submit({"args": 1}, ttl_seconds=1e-3)
        assert client.wait(expired, timeout=10).status in ("EXPIRED", "SUCCESS")
    with GatewayClient(stacks.a.url) as anonymous, pytest.raises(GatewayError) as refused:
        anonymous.get(task_id)
    assert refused.value.status == 401
    with GatewayClient(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(ClientError):
        nowhere.get(task_id)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_the_cli_through_the_gateway_and_straight_to_the_broker(stacks: Stacks) -> None:
    env = base_env(FORWARDER_GATEWAY_URL=stacks.a.url, FORWARDER_GATEWAY_TOKEN=TOKEN)
    waited = _cli("submit", '{"args": {"cli": 1}}', "--wait", "20", "--timeout", "10", env=env)
    assert waited.returncode == 0, waited.stderr
    result = json.loads(waited.stdout)
    assert (result["status"], result["status_code"]) == ("SUCCESS", 200)

    key = f"cli-{uuid.uuid4()}"
    twice = [
        _cli("submit", '{"args": {"cli": 2}}', "--idempotency-key", key, env=env) for _ in "ab"
    ]
    assert twice[0].returncode == twice[1].returncode == 0, twice[0].stderr
    assert twice[0].stdout == twice[1].stdout

    canceled = _cli("cancel", twice[0].stdout.strip(), env=env)
    assert canceled.returncode == 0, canceled.stderr
    assert json.loads(canceled.stdout)["task_id"] == twice[0].stdout.strip()

    refused = _cli("get", "some-task", "--token", "not-the-token-at-all", env=env)
    assert refused.returncode == 1 and "401" in refused.stderr

    broker = ["--broker-url", stacks.redis_url, "--queue", "gw-prefork"]
    plain_env = base_env()
    direct = [
        _cli("submit", '{"args": {"cli": 3}}', *broker, "--idempotency-key", key, env=plain_env)
        for _ in "ab"
    ]
    assert direct[0].returncode == 0, direct[0].stderr
    assert direct[0].stdout == direct[1].stdout
    got = _cli("get", direct[0].stdout.strip(), *broker, "--wait", "20", env=plain_env)
    assert json.loads(got.stdout)["status"] == "SUCCESS", got.stdout + got.stderr
