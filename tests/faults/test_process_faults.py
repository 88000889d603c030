"""Faults in the processes around a run: each case counts submitted, stored, duplicated, lost.

Marked ``faults`` (``pytest -m faults`` runs only these). The default counts keep the folder
under ~3 minutes; ``FORWARDER_FAULTS_LONG=1`` adds the worker SIGKILL case (~100 s: it waits out
a 60 s visibility timeout), ``FORWARDER_FAULTS_TASKS=1000`` runs every case with 1,000 tasks, and
``FORWARDER_FAULTS_REPORT=FILE`` appends each case's counts to FILE (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from forwarder.devtools.localrun import Child, find_redis_server, free_port
from support.processes import Processes
from support.tally import Tally, scaled, submit_all

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

POOLS = ["prefork", "gevent"]


def wait_stored(tally: Tally, url: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tally.read(url)
        if len(tally.stored) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{tally.case}: only {len(tally.stored)} of {count} stored after {timeout} s")


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not os.environ.get("FORWARDER_FAULTS_LONG"),
    reason="~100 s (a 60 s visibility timeout): set FORWARDER_FAULTS_LONG=1 to run it",
)
def test_worker_sigkill_mid_run_then_a_new_worker_loses_none(
    procs: Processes, redis_url: str
) -> None:
    """SIGKILL of the whole worker (main process and children) with tasks in flight.

    The Redis transport keeps each delivered, unacknowledged message in its ``unacked`` set; a
    later worker restores it once the visibility timeout (the shortest allowed: 60 s) has passed.
    """
    count = scaled(200)
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        queue="sigkill",
        concurrency=4,
        extra_args=["--task-visibility", "VISIBILITY_1M"],
    )
    client = procs.client(broker_url=redis_url, queue="sigkill")
    tally = Tally(f"worker SIGKILL mid-run (redis, prefork c=4, {count} tasks)")
    submit_all(client, tally, [{"args": {"n": n, "delay": 0.02}} for n in range(count)])
    wait_stored(tally, redis_url, count // 3, timeout=60)
    assert worker.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
    tally.read(redis_url)
    at_kill = len(tally.stored)
    assert at_kill < count, "the run finished before the kill: nothing was tested"

    procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        queue="sigkill",
        concurrency=4,
        extra_args=["--task-visibility", "VISIBILITY_1M"],
    )
    # 60 s of visibility timeout, kombu's restore pass (every 10 s), then the work itself.
    tally.wait(redis_url, timeout=150)
    tally.model_calls = echo.stats()["predict_requests"]
    tally.report()
    assert tally.lost == [], tally.line()
    assert tally.states() == {"SUCCESS": count}, tally.failures()
    # At-least-once: only the tasks in flight at the kill (at most one per process, prefetch 1,
    # plus the one each had reserved) may have reached the model twice.
    assert 0 <= tally.duplicates <= 8, tally.line()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", POOLS)
def test_model_server_killed_and_restarted_mid_run(
    pool: str, procs: Processes, redis_url: str
) -> None:
    """SIGKILL of the model server with requests in flight, back on the same port 1 s later."""
    count = scaled(150)
    echo = procs.echo()
    client = procs.client(broker_url=redis_url, queue="model")
    tally = Tally(f"model server SIGKILL + restart ({pool} c=4, {count} tasks)")
    # Queued before the worker starts: submitting under load took longer than the whole run.
    submit_all(client, tally, [{"args": {"n": n, "delay": 0.05}} for n in range(count)])
    procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        queue="model",
        concurrency=4,
        sets=["worker.retry_backoff_max_seconds=0.5"],
    )
    wait_stored(tally, redis_url, count // 3, timeout=60)
    before = echo.stats()["predict_requests"]
    echo.kill()
    tally.read(redis_url)
    assert len(tally.stored) < count, "the run finished before the kill: nothing was tested"
    time.sleep(1.0)
    echo.start()  # same port; its request counter starts again from 0
    tally.wait(redis_url, timeout=60)
    tally.model_calls = before + echo.stats()["predict_requests"]
    tally.report()
    assert tally.lost == [], tally.line()
    assert tally.states() == {"SUCCESS": count}, tally.failures()
    # A request the killed server had read but not answered is sent again: at most one per slot.
    assert 0 <= tally.duplicates <= 4, tally.line()


def _redis_command(port: int, folder: Path) -> list[str]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server not found")
    return [
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
        *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
    ]


RESTARTS = 4


def _vanished(url: str, queue: str, task_ids: list[str]) -> list[str]:
    """Of ``task_ids``, those whose message is neither in ``queue`` nor unacknowledged."""
    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        held = b"".join([*conn.lrange(queue, 0, -1), *conn.hvals("unacked")])
    return [task_id for task_id in task_ids if task_id.encode() not in held]


def _kill_and_restart(server: Child, port: int, folder: Path) -> Child:
    """SIGKILL redis-server (no clean shutdown: only what the append-only file holds survives)."""
    assert server.stop(signal.SIGKILL, timeout=15) == -signal.SIGKILL
    time.sleep(0.5)
    restarted = Child(_redis_command(port, folder), folder / "redis.log")
    restarted.wait_for("Ready to accept connections", 15)
    return restarted


@pytest.mark.timeout(240)
@pytest.mark.parametrize("pool", POOLS)
def test_redis_sigkilled_and_restarted_while_tasks_drain(
    pool: str, procs: Processes, tmp_path: Path
) -> None:
    """redis-server (append-only file, fsync always) SIGKILLed and restarted 4 times mid-run.

    A restart comes each time another fifth of the tasks is stored. Nothing may be lost or fail,
    and the run must not wait out the visibility timeout: every message a worker held is either
    acknowledged or put back once Redis is back. Duplicated model calls are counted and reported.
    """
    count = scaled(1000)
    port = free_port()
    folder = tmp_path / "redis-aof"
    folder.mkdir()
    server = Child(_redis_command(port, folder), folder / "redis.log")
    try:
        server.wait_for("Ready to accept connections", 15)
        url = f"redis://127.0.0.1:{port}/0"
        echo = procs.echo()
        worker = procs.worker(
            model_port=echo.port,
            pool=pool,
            broker_url=url,
            queue="restart",
            concurrency=8,
            extra_args=["--task-visibility", "VISIBILITY_1M"],
        )
        client = procs.client(broker_url=url, queue="restart")
        tally = Tally(f"redis-server SIGKILL + restart x{RESTARTS} ({pool} c=8, {count} tasks)")
        submit_all(client, tally, [{"args": {"n": n, "delay": 0.02}} for n in range(count)])
        for restart in range(1, RESTARTS + 1):
            wait_stored(tally, url, count * restart // (RESTARTS + 1), timeout=60)
            assert len(tally.stored) < count, f"finished before restart {restart}: {tally.line()}"
            server = _kill_and_restart(server, port, folder)
        # Under the 60 s visibility timeout: nothing may be left for the restore sweep.
        tally.wait(url, timeout=50)
        tally.model_calls = echo.stats()["predict_requests"]
        tally.report()
        assert worker.running, worker.log()[-3000:]
        assert tally.lost == [], (
            f"{tally.line()}; in neither queue nor unacked: {_vanished(url, 'restart', tally.lost)}"
        )
        assert tally.states() == {"SUCCESS": count}, tally.failures()
        # At-least-once: a task in flight at a kill may reach the model again, one per slot.
        assert 0 <= tally.duplicates <= 8 * RESTARTS, tally.line()
    finally:
        server.stop(signal.SIGKILL, timeout=15)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_under_load_finishes_in_flight_and_loses_none(
    pool: str, procs: Processes, redis_url: str
) -> None:
    count = scaled(150)
    echo = procs.echo()
    first = procs.worker(
        model_port=echo.port, pool=pool, broker_url=redis_url, queue="term", concurrency=4
    )
    client = procs.client(broker_url=redis_url, queue="term")
    tally = Tally(f"SIGTERM under load ({pool} c=4, {count} tasks)")
    submit_all(client, tally, [{"args": {"n": n, "delay": 0.05}} for n in range(count)])
    wait_stored(tally, redis_url, count // 3, timeout=60)
    assert first.stop(signal.SIGTERM, timeout=30) == 0, first.log()[-3000:]
    tally.read(redis_url)
    assert len(tally.stored) < count, "the run finished before the stop: nothing was tested"
    # Every task the stopping worker started, it finished: none is left STARTED without a worker.
    started = [t for t in tally.submitted if f"[{t}] received" in first.log()]
    unfinished = [t for t in started if t not in tally.stored]
    assert len(unfinished) <= 8, "more left over than one reserved message per slot"
    calls_first = echo.stats()["predict_requests"]
    assert calls_first == len(tally.stored), "the stopping worker called the model without storing"

    stored_first = set(tally.stored)

    second = procs.worker(
        model_port=echo.port, pool=pool, broker_url=redis_url, queue="term", concurrency=4
    )
    tally.wait(redis_url, timeout=60)
    tally.model_calls = echo.stats()["predict_requests"]
    tally.report()
    assert tally.lost == [], tally.line()
    assert tally.states() == {"SUCCESS": count}, tally.failures()
    # Every ack of a stored task reached Redis before the first worker's channel closed: none of
    # them was put back for the second worker.
    rerun = [t for t in stored_first if f"[{t}] received" in second.log()]
    assert rerun == [], f"{len(rerun)} stored tasks delivered again: {tally.line()}"
    assert tally.duplicates == 0, tally.line()
