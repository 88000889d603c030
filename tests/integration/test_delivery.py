"""Delivery guarantees with real processes: warm shutdown, model server outages, readiness."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from forwarder.client.broker import ForwarderClient
from forwarder.devtools.localrun import free_port
from support.processes import Processes
from support.waiting import wait_all, wait_for, wait_one

pytestmark = [pytest.mark.integration]

POOLS = ["prefork", "gevent"]


def _statuses(client: ForwarderClient, task_ids: list[str]) -> dict[str, str]:
    return {task_id: client.get(task_id).status for task_id in task_ids}


def _two_started(client: ForwarderClient, task_ids: list[str], timeout: float) -> list[str]:
    """The tasks STARTED once at least two are (within ``timeout`` s)."""

    def started() -> list[str] | None:
        statuses = _statuses(client, task_ids)
        running = [task_id for task_id in task_ids if statuses[task_id] == "STARTED"]
        return running if len(running) >= 2 else None

    return wait_for(started, timeout, "two tasks never reached STARTED")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_finishes_tasks_in_flight_and_loses_none(
    pool: str, procs: Processes, redis_url: str
) -> None:
    echo = procs.echo()
    queue = f"sigterm-{pool}"
    first = procs.worker(
        model_port=echo.port, pool=pool, queue=queue, broker_url=redis_url, concurrency=2
    )
    client = procs.client(broker_url=redis_url, queue=queue)
    ids = [client.submit({"args": {"n": n, "delay": 3}}) for n in range(6)]

    in_flight = _two_started(client, ids, 10)
    assert len(in_flight) == 2, _statuses(client, ids)
    # Late in the tasks: a blocking consumer (gevent) is then in its second wait for a slot,
    # which the first task's end cuts short, and Celery's loop drains once more after SIGTERM.
    time.sleep(2.3)

    assert first.stop(signal.SIGTERM, timeout=15) == 0, first.log()[-3000:]
    assert "Warm shutdown" in first.log()
    # The tasks in flight were finished and stored, not dropped; no new one was started.
    after_first = _statuses(client, ids)
    assert all(after_first[t] == "SUCCESS" for t in in_flight), after_first
    assert sum(s == "SUCCESS" for s in after_first.values()) == 2, after_first
    assert echo.stats()["predict_requests"] == 2, "the stopping worker took new tasks"
    for task_id in in_flight:
        n = ids.index(task_id)
        assert client.get(task_id).result == {
            "result": f'{{"n": {n}, "delay": 3}}',
            "status_code": 200,
        }

    second = procs.worker(
        model_port=echo.port, pool=pool, queue=queue, broker_url=redis_url, concurrency=2
    )
    results = wait_all(client, ids, timeout=30)
    assert {t: r.status for t, r in results.items()} == dict.fromkeys(ids, "SUCCESS")
    assert echo.stats()["predict_requests"] == 6, "a task ran more or less than exactly once"
    served_by_second = [t for t in ids if f"[{t}] succeeded" in second.log()]
    assert sorted(served_by_second) == sorted(t for t in ids if t not in in_flight)
    assert second.running


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("broker", ["embedded", "sqs"])
def test_a_polling_gevent_worker_takes_no_task_after_sigterm(
    broker: str, procs: Processes, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The embedded broker and SQS are polled: a poll after SIGTERM took the next task."""
    if broker == "sqs":
        aws = request.getfixturevalue("moto_here")
        queue_url = aws.client("sqs").create_queue(QueueName="inference")["QueueUrl"]
        aws.client("s3").create_bucket(Bucket="results")
        flags = {"--sqs-url": queue_url, "--result-backend": "s3://results/tasks"}
        where: dict[str, Any] = {
            "env": aws.env,
            "extra_args": [a for f in flags.items() for a in f],
        }
        client = procs.client(queue="inference", extra_flags=flags)
    else:
        where = {"data_dir": tmp_path / "data"}
        client = procs.client(queue="inference", data_dir=tmp_path / "data")
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, pool="gevent", concurrency=2, **where)
    ids = [client.submit({"args": {"n": n, "delay": 3}}) for n in range(4)]

    in_flight = _two_started(client, ids, 15)
    time.sleep(2.0)  # late in the tasks: the first ends while the worker is already stopping

    assert worker.stop(signal.SIGTERM, timeout=20) == 0, worker.log()[-3000:]
    after = _statuses(client, ids)
    assert all(after[t] == "SUCCESS" for t in in_flight), after
    assert sum(s == "SUCCESS" for s in after.values()) == 2, after
    assert echo.stats()["predict_requests"] == 2, "the stopping worker took new tasks"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_prefork_recycles_children_after_max_tasks(procs: Processes, redis_url: str) -> None:
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool="prefork",
        queue="recycle",
        broker_url=redis_url,
        concurrency=1,
        env={"CELERY_WORKER_MAX_TASKS_PER_CHILD": "2"},
    )
    client = procs.client(broker_url=redis_url, queue="recycle")
    seen: set[int] = set()
    results = []
    latencies = []
    for n in range(6):
        submitted = time.monotonic()
        task_id = client.submit({"args": {"n": n, "delay": 0.2}})
        deadline = submitted + 15
        while time.monotonic() < deadline:
            seen.update(child.pid for child in worker.children())
            current = client.get(task_id)
            if current.ready:
                break
            time.sleep(0.02)
        latencies.append(time.monotonic() - submitted)
        results.append(client.get(task_id))
    assert [r.status for r in results] == ["SUCCESS"] * 6, results
    # A replacement child takes a fork, not the pool's 5 s maintenance timer.
    assert max(latencies) < 2.0, [round(latency, 2) for latency in latencies]
    assert [r.result["result"] for r in results] == [
        f'{{"n": {n}, "delay": 0.2}}' for n in range(6)
    ]
    assert len(seen) >= 3, f"child pids seen: {sorted(seen)}"

    # The pool process that ran each task, as Celery logs it after storing the result (so the
    # last line may come a moment after the result is read): a new one after every 2 tasks.
    def runners() -> list[str]:
        records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        return [r["process"] for r in records if "succeeded in" in r.get("message", "")]

    def six_runners() -> list[str] | None:
        found = runners()
        return found if len(found) == 6 else None

    ran = wait_for(six_runners, 10, lambda: f"success lines: {runners()}")
    assert len(set(ran)) >= 3, ran
    assert all(ran.count(name) <= 2 for name in set(ran)), ran


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", POOLS)
def test_task_waits_for_a_restarting_model_server_and_gives_up_when_bounded(
    pool: str, procs: Processes, redis_url: str
) -> None:
    echo = procs.echo()
    patient = procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="patient",
        broker_url=redis_url,
        sets=["worker.retry_backoff_max_seconds=1"],
        wait=False,
    )
    bounded = procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="bounded",
        broker_url=redis_url,
        sets=["worker.model_retries=2", "worker.retry_backoff_max_seconds=0.2"],
        wait=False,
    )
    patient.wait_ready()
    bounded.wait_ready()
    patient_client = procs.client(broker_url=redis_url, queue="patient")
    bounded_client = procs.client(broker_url=redis_url, queue="bounded")

    echo.stop()
    waiting = patient_client.submit({"args": {"x": "survives a restart"}})
    doomed = bounded_client.submit({"args": {"x": "no server"}})

    # The bounded one gives up after 1 + 2 attempts.
    failed = wait_one(bounded_client, doomed, timeout=20)
    assert failed.status == "FAILURE", failed
    assert failed.error is not None
    assert "gave up after 3 attempt" in failed.error, failed.error
    assert "cannot connect to model server" in failed.error, failed.error

    # The patient one is retried, never dropped and never failed, while the server is down.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        status = patient_client.get(waiting).status
        assert status not in ("SUCCESS", "FAILURE"), status
        time.sleep(0.1)
    assert "model server unavailable, retry" in patient.log()

    echo.start()  # same port as before
    result = wait_one(patient_client, waiting, timeout=20)
    assert result.status == "SUCCESS", result
    assert result.result == {"result": '{"x": "survives a restart"}', "status_code": 200}
    assert echo.stats()["predict_requests"] == 1
    assert patient.running and bounded.running


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_worker_waits_for_model_server_readiness(
    pool: str, procs: Processes, redis_url: str
) -> None:
    port = free_port()
    worker = procs.worker(
        model_port=port, pool=pool, queue="readiness", broker_url=redis_url, wait=False
    )
    wait_for(
        lambda: (
            f"waiting for model server to be ready at http://127.0.0.1:{port}/readyz"
            in worker.log()
        ),
        30,
        "the worker did not log that it waits for the model server",
    )
    time.sleep(1.5)
    assert worker.running
    assert not worker.is_ready(), worker.log()

    echo = procs.echo(port, ready_after=1)
    assert echo.port == port
    listening = time.monotonic()
    worker.wait_ready(timeout=20)
    # The worker waited for /readyz to say 200 (after 1 s), not merely for the port to open.
    assert time.monotonic() - listening >= 0.9
    assert "model server is ready" in worker.log()
    client = procs.client(broker_url=redis_url, queue="readiness")
    result = wait_one(client, client.submit({"args": {"ok": True}}))
    assert (result.status, result.result) == (
        "SUCCESS",
        {"result": '{"ok": true}', "status_code": 200},
    )
