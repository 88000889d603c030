"""Finished work is not run again: a task delivered again after its result is stored.

Real Redis, the real echo model server (it counts its calls), a real worker with one slot and the
callback hook posting to a receiver in this process. Each task is published twice with the same
id, as a producer retrying its send does, or as a worker lost between the store and the
acknowledgement leaves it; then one more task, which with one slot the worker reaches only once
both copies are done.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from forwarder.devtools.localrun import free_port
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_all, wait_for

pytestmark = [pytest.mark.integration]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("forwarder_")
    }


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_task_delivered_twice_calls_the_model_and_its_callback_once(
    pool: str,
    procs: Processes,
    redis_url: str,
    callback_receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    config = tmp_path / "hooks.yaml"
    config.write_text(
        yaml.safe_dump(
            {"hooks": ["callback"], "callback": {"default_url": callback_receiver.url()}}
        )
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    done, failed = f"done-{uuid.uuid4()}", f"failed-{uuid.uuid4()}"
    for _ in range(2):
        client.submit({"args": {"n": 1}}, task_id=done)
        client.submit([1, 2], task_id=failed)  # not a JSON object: FAILURE, no model call
    last = client.submit({"args": {"n": 2}})

    echo = procs.echo()
    metrics_port = free_port()
    worker = procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        concurrency=1,
        extra_args=[
            "--config", str(config),
            "--metrics-port", str(metrics_port),
            "--metrics-host", "127.0.0.1",
        ],
    )  # fmt: skip
    results = wait_all(client, [done, failed, last], timeout=30)
    assert {t: r.status for t, r in results.items()} == {
        done: "SUCCESS",
        failed: "FAILURE",
        last: "SUCCESS",
    }
    # Callbacks are queued deliveries, in no set order: wait for the three, then for a second one.
    wait_for(
        lambda: {done, failed, last} <= set(callback_receiver.by_task_id()),
        15,
        lambda: f"callbacks received: {[r.json()['task_id'] for r in callback_receiver.received]}",
    )
    time.sleep(0.3)
    bodies = [r.json() for r in callback_receiver.received]
    assert sorted(body["task_id"] for body in bodies) == sorted([done, failed, last])
    assert echo.stats()["predict_requests"] == 2, "one model call for each of the two tasks"
    [first] = [body for body in bodies if body["task_id"] == done]
    assert first == {**results[done].result, "task_id": done}, "the body is the stored result"

    q = 'queue="inference"'
    expected = {
        f'forwarder_redeliveries_skipped_total{{{q},status="success"}}': 1,
        f'forwarder_redeliveries_skipped_total{{{q},status="failure"}}': 1,
        f'forwarder_tasks_finished_total{{{q},status="success"}}': 2,
        f'forwarder_tasks_finished_total{{{q},status="failure"}}': 1,
    }
    seen: dict[str, float] = {}

    def counted() -> bool:
        nonlocal seen
        seen = scrape(metrics_port)
        return all(seen.get(name) == value for name, value in expected.items())

    wait_for(counted, 15, lambda: f"{ {n: seen.get(n) for n in expected} } != {expected}")
    assert worker.stop() == 0
    log = worker.log()
    for task_id, state in ((done, "SUCCESS"), (failed, "FAILURE")):
        line = f"task {task_id}: already {state}, redelivery acknowledged without running it again"
        assert log.count(line) == 1, log[-3000:]
