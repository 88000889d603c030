"""Sending tasks, reading their stored results in bulk, and one measured prefilled run.

A prefilled run sends every task before the worker starts, so the load generator never competes
with the worker for the cores while it is measured; the rate is taken between the 5th and 95th
percentile of the tasks' ``date_done``, which leaves out the start and the tail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from harness import Stack, WorkerSpec, start_worker, tree_cpu_seconds, tree_memory
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import load_settings
from forwarder.protocol import FINAL_STATES

CHUNK = 1000
STALL_SECONDS = 120.0


@contextmanager
def progress(description: str, total: int) -> Iterator[tuple[Progress, TaskID]]:
    """A bar on stderr, so the tables on stdout stay clean."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        yield bar, bar.add_task(description, total=total)


def client_for(stack: Stack, queue: str) -> ForwarderClient:
    settings = load_settings(env={}, flags={"--broker-url": stack.broker, "--queue": queue})
    return ForwarderClient(settings)


def submit(client: ForwarderClient, count: int, start: int = 0) -> list[str]:
    return [client.submit({"args": {"i": index}}) for index in range(start, start + count)]


def prefill(stack: Stack, queue: str, count: int) -> list[str]:
    ids: list[str] = []
    with client_for(stack, queue) as client, progress(f"sending {count}", count) as (bar, task):
        while len(ids) < count:
            ids += submit(client, min(CHUNK, count - len(ids)), len(ids))
            bar.update(task, completed=len(ids))
    return ids


def stored(stack: Stack, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored meta (``status``, ``date_done``) of each of ``ids`` that has one."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        raws = stack.redis.mget([f"celery-task-meta-{task_id}" for task_id in chunk])
        for task_id, raw in zip(chunk, raws, strict=True):
            if raw is not None:
                found[task_id] = json.loads(raw)
    return found


def wait_results(
    stack: Stack,
    ids: list[str],
    timeout: float,
    alive: Callable[[], bool] | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> dict[str, dict[str, Any]]:
    """Every task's final meta, polling only the ones not final yet.

    Stops at ``timeout``, or once no task has finished for ``stall_seconds``: a worker that lost
    track of a task (plain Celery refusing an ack) would otherwise hold the run until the timeout.
    """
    done: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    now = time.monotonic()
    deadline, last_progress = now + timeout, now
    with progress(f"waiting for {len(ids)} results", len(ids)) as (bar, task):
        while pending and now < deadline and now - last_progress < stall_seconds:
            # Read once more after the process is gone: what it stored before exiting counts.
            gone = alive is not None and not alive()
            metas = stored(stack, pending)
            finished = {i: m for i, m in metas.items() if m.get("status") in FINAL_STATES}
            if finished:
                done |= finished
                pending = [i for i in pending if i not in done]
                last_progress = time.monotonic()
            bar.update(task, completed=len(done))
            if gone:
                break
            if pending:
                time.sleep(0.2)
            now = time.monotonic()
    return done


def rate(metas: list[dict[str, Any]]) -> float:
    """Tasks per second between the 5th and 95th percentile of their ``date_done``."""
    times = sorted(datetime.fromisoformat(m["date_done"]).timestamp() for m in metas)
    if len(times) < 2:
        return 0.0
    low, high = int(0.05 * (len(times) - 1)), int(0.95 * (len(times) - 1))
    if times[high] <= times[low]:
        low, high = 0, len(times) - 1
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else 0.0


def run_prefilled(
    stack: Stack, spec: WorkerSpec, tasks: int, timeout: float = 900
) -> dict[str, Any]:
    """Send ``tasks``, start the worker, wait for every result; its rate, CPU, memory and log."""
    queue = stack.new_queue(spec.label)
    ids = prefill(stack, queue, tasks)
    worker = start_worker(stack, spec, queue)
    try:
        cpu_before = tree_cpu_seconds(worker.pid)
        started = time.monotonic()
        done = wait_results(stack, ids, timeout, alive=lambda: worker.running)
        elapsed = time.monotonic() - started
        cpu = tree_cpu_seconds(worker.pid) - cpu_before
        rss, pss = tree_memory(worker.pid)
    finally:
        worker.stop(timeout=60)
    failed = sum(meta.get("status") != "SUCCESS" for meta in done.values()) + len(ids) - len(done)
    return {
        "spec": spec.__dict__,
        "tasks": tasks,
        "tasks_per_s": rate(list(done.values())),
        "elapsed": elapsed,
        "failed": failed,
        "cpu_ms_per_task": 1000 * cpu / tasks,
        "rss_mib": rss,
        "pss_mib": pss,
        "log": worker.log(),
    }
