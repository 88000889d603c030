"""Queued callbacks under faults: a receiver down then back, and a worker SIGKILLed mid-deliveries.

Real redis-server, the echo model server, real workers (each with its deliverer beside it) and
real receivers on 127.0.0.1. Short by default; ``FORWARDER_FAULTS_TASKS`` scales the task count
and ``FORWARDER_FAULTS_DOWN_SECONDS`` the receiver's outage for the long version
(docs/reliability.md has both, and the command).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.devtools.localrun import free_port
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.tally import scaled
from support.waiting import wait_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

DOWN_SECONDS = float(os.environ.get("FORWARDER_FAULTS_DOWN_SECONDS") or 20)


def config(path: Path, url: str, **callback: Any) -> list[str]:
    settings = {
        "default_url": url,
        "timeout_seconds": 2,
        "delivery_backoff_seconds": 0.5,
        "delivery_backoff_max_seconds": 4,
        "delivery_visibility_seconds": 10,
        "delivery_slots": 4,
        **callback,
    }
    path.write_text(yaml.safe_dump({"hooks": ["callback"], "callback": settings}))
    return ["--config", str(path)]


def test_a_receiver_down_then_back_gets_every_callback(
    procs: Processes, redis_url: str, tmp_path: Path
) -> None:
    count = scaled(100)
    port = free_port()
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        concurrency=2,
        extra_args=config(tmp_path / "cb.yaml", f"http://127.0.0.1:{port}/callback"),
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    started = time.monotonic()
    task_ids = [client.submit({"args": {"n": n}}) for n in range(count)]
    results = wait_all(client, task_ids, timeout=120 + count / 5)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    # Every result is stored while nothing listens: the receiver's outage held no slot.
    inference_seconds = time.monotonic() - started
    time.sleep(max(0.0, DOWN_SECONDS - inference_seconds))
    with CallbackReceiver(port=port) as receiver:
        back = time.monotonic()
        wait_for(
            lambda: len(receiver.by_task_id()) >= count,
            60 + count / 10,
            lambda: (
                f"{len(receiver.by_task_id())} of {count} callbacks after the receiver came back"
            ),
        )
        caught_up = time.monotonic() - back
        time.sleep(2)  # late duplicates, if any, are counted too
        assert set(receiver.by_task_id()) == set(task_ids)
        duplicates = receiver.duplicates()
    log = worker.log()
    assert "attempt 1, next in" in log  # the outage was retried, not dropped
    print(
        f"\nreceiver down {DOWN_SECONDS:g} s, {count} tasks: inference {inference_seconds:.1f} s, "
        f"{count} of {count} callbacks delivered {caught_up:.1f} s after it came back, "
        f"0 lost, {duplicates} duplicates"
    )


def test_a_worker_killed_mid_deliveries_delivers_the_pending_ones_after_restart(
    procs: Processes, redis_url: str, tmp_path: Path
) -> None:
    count = scaled(16)
    with CallbackReceiver(delay=0.5) as receiver:
        args = config(tmp_path / "cb.yaml", receiver.url(), delivery_slots=2)
        echo = procs.echo()
        first = procs.worker(
            model_port=echo.port, broker_url=redis_url, concurrency=2, extra_args=args
        )
        client = procs.client(broker_url=redis_url, queue="inference")
        task_ids = [client.submit({"args": {"n": n}}) for n in range(count)]
        wait_all(client, task_ids, timeout=120)
        wait_for(lambda: len(receiver.received) >= 3, 30, "no delivery began")
        # Both processes at once: the worker and the deliverer beside it, mid-deliveries.
        first.child.stop(signal.SIGKILL, timeout=10)
        before = len(receiver.by_task_id())
        assert before < count, "every callback was delivered before the kill"
        procs.worker(model_port=echo.port, broker_url=redis_url, concurrency=2, extra_args=args)
        wait_for(
            lambda: len(receiver.by_task_id()) >= count,
            90,
            lambda: f"{len(receiver.by_task_id())} of {count} callbacks after the restart",
        )
        assert set(receiver.by_task_id()) == set(task_ids)
        duplicates = receiver.duplicates()
    print(
        f"\nworker SIGKILLed with {count - before} of {count} callbacks pending: "
        f"all {count} delivered after the restart, {duplicates} duplicates"
    )
