"""The gevent pool: many tasks in flight in one process."""

from __future__ import annotations

import time
from typing import Any

import pytest

from forwarder.client.broker import ForwarderClient
from support.processes import Processes
from support.waiting import wait_for, wait_one
from support.workers import Worker

pytestmark = [pytest.mark.integration]


def _run_batch(
    client: ForwarderClient, worker: Worker, count: int, delay: float
) -> tuple[float, set[int]]:
    """Submit ``count`` tasks of ``delay`` seconds; wait for all; return (seconds, child pids)."""
    started = time.monotonic()
    ids = [client.submit({"args": {"n": n, "delay": delay}}) for n in range(count)]
    children_seen: set[int] = set()
    done: dict[str, Any] = {}
    deadline = started + 20
    while len(done) < count and time.monotonic() < deadline:
        children_seen.update(child.pid for child in worker.children())
        for task_id in ids:
            if task_id not in done:
                current = client.get(task_id)
                if current.ready:
                    done[task_id] = current
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert len(done) == count, f"{len(done)} of {count} done after {elapsed:.1f} s"
    assert [done[t].status for t in ids] == ["SUCCESS"] * count
    assert [done[t].result["result"] for t in ids] == [
        f'{{"n": {n}, "delay": {delay}}}' for n in range(count)
    ]
    return elapsed, children_seen


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_gevent_runs_16_tasks_at_once_in_one_process(procs: Processes, redis_url: str) -> None:
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool="gevent", queue="gevent16", broker_url=redis_url, concurrency=16
    )
    client = procs.client(broker_url=redis_url, queue="gevent16")
    warm_up = wait_one(client, client.submit({"args": {"warm": "up"}}))
    assert warm_up.status == "SUCCESS", warm_up

    elapsed, children = _run_batch(client, worker, 32, 0.5)
    # 32 tasks of 0.5 s take 16 s one at a time, 1 s with 16 at once.
    assert elapsed < 3.0, f"32 tasks of 0.5 s took {elapsed:.2f} s with 16 greenlets"
    assert children == set(), f"the gevent worker has child processes: {children}"
    assert worker.children() == []
    stats = echo.stats()
    assert stats["max_in_flight"] >= 16, stats
    assert stats["predict_requests"] == 33, stats

    # Four waves: a worker that idles whenever all its slots were busy (it used to wait out a 2 s
    # broker poll each time: 6.7 s here) falls far behind the 2 s this takes.
    elapsed, children = _run_batch(client, worker, 64, 0.5)
    assert elapsed < 3.5, f"64 tasks of 0.5 s took {elapsed:.2f} s with 16 greenlets"
    assert children == set()
    assert echo.stats()["predict_requests"] == 97


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_saturated_gevent_worker_waits_without_spending_cpu(
    procs: Processes, redis_url: str
) -> None:
    psutil = pytest.importorskip("psutil")
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool="gevent", queue="saturated", broker_url=redis_url, concurrency=4
    )
    client = procs.client(broker_url=redis_url, queue="saturated")
    ids = [client.submit({"args": {"n": n, "delay": 6}}) for n in range(8)]
    wait_for(lambda: echo.stats()["in_flight"] == 4, 10, lambda: f"not saturated: {echo.stats()}")
    process = psutil.Process(worker.pid)
    cpu_before = sum(process.cpu_times()[:2])
    wakes_before = process.num_ctx_switches().voluntary
    time.sleep(2.0)
    spent = sum(process.cpu_times()[:2]) - cpu_before
    wakes = process.num_ctx_switches().voluntary - wakes_before
    # Every slot is taken: it sleeps until one frees, waking only for its timers (13 wakes in 2 s
    # here; polling every 2 ms woke it ~900 times). Wakes are counted, not CPU alone, because CPU
    # per wake grows with the machine's load.
    assert wakes < 100, f"woke {wakes} times in 2 s while saturated"
    assert spent < 0.1, f"{spent:.3f} s of CPU in 2 s while saturated"
    assert [client.get(task_id).status for task_id in ids[4:]] == ["PENDING"] * 4
