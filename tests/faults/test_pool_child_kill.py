"""An idle prefork child killed with SIGKILL: the worker replaces it and keeps working.

The real echo model server and a prefork worker whose one child is idle when it is killed, on
the embedded broker (billiard's blocking pool: one job pipe and one lock shared by the children)
and on Redis (Celery's event-loop pool: pipes of its own for each child). The replacement must
take the next tasks (none left PENDING) and the worker must still stop warmly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from support.processes import Processes
from support.waiting import wait_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

QUEUE = "kill-child"


def pool_children(worker_pid: int) -> list[psutil.Process]:
    """The pool's processes: the worker's direct children."""
    try:
        return psutil.Process(worker_pid).children()
    except psutil.NoSuchProcess:
        return []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_an_idle_child_killed_with_sigkill_is_replaced_and_the_worker_still_stops(
    broker: str, procs: Processes, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where: dict[str, object] = (
        {"data_dir": tmp_path / "data"}
        if broker == "embedded"
        else {"broker_url": request.getfixturevalue("redis_url")}
    )
    echo = procs.echo()
    # One child: with billiard's blocking pool before the fix, an idle child always held the
    # shared lock of the job pipe, so killing this one is the case that wedged the pool.
    worker = procs.worker(model_port=echo.port, queue=QUEUE, concurrency=1, **where)  # type: ignore[arg-type]
    client = procs.client(queue=QUEUE, **where)  # type: ignore[arg-type]
    wait_all(client, [client.submit({"args": {"n": n}}) for n in range(3)], timeout=30)
    [victim] = wait_for(lambda: pool_children(worker.pid), 15, "no pool process")
    time.sleep(0.5)  # back waiting for its next job
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    wait_for(
        lambda: [c for c in pool_children(worker.pid) if c.pid != victim.pid],
        15,
        lambda: f"no replacement pool process: {pool_children(worker.pid)}",
    )

    after = [client.submit({"args": {"n": n}}) for n in range(10)]
    results = wait_all(client, after, timeout=60)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    assert echo.stats()["predict_requests"] == 13

    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=30) == 0, worker.log()[-3000:]
    assert time.monotonic() - started < 30
