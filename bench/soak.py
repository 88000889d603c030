"""Memory over a long run: does a worker's RSS grow with the tasks it has done?

Each mode is one worker fed by a thread that keeps at most ``--max-waiting`` tasks queued; every
task sends one callback, so the receiver's count is the tasks done. Every ``--sample-seconds`` the
worker tree's RSS and PSS are read; after the warm-up fraction, a least-squares line of RSS
against tasks done gives the growth in MiB per 100k tasks. Modes: our worker with the callback
and Firehose logging hooks (prefork, gevent), and the plain-Celery baseline building an STS and
Firehose client on every task (``per-task-client``).

    .venv/bin/python bench/soak.py --tasks 200000 --per-task-tasks 20000 --concurrency 16
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from typing import Any

from harness import (
    Stack,
    WorkerSpec,
    baseline_reports,
    per_process,
    sink_reports,
    start_worker,
    tree_memory,
)
from load import CHUNK, STALL_SECONDS, client_for, progress, submit, wait_results

MODES = ("forwarder-prefork", "forwarder-gevent", "per-task-client")


def mode_spec(mode: str, concurrency: int) -> WorkerSpec:
    if mode == "per-task-client":
        return WorkerSpec("baseline", "prefork", concurrency, callback=True, firehose="per-task")
    pool = mode.removeprefix("forwarder-")
    return WorkerSpec("forwarder", pool, concurrency, callback=True, firehose="sink")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x; 0 with fewer than two distinct x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / max(n, 1)
    mean_y = sum(y for _, y in points) / max(n, 1)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if n < 2 or spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


class Feeder(threading.Thread):
    """Sends ``tasks`` tasks, never letting more than ``max_waiting`` wait in the queue."""

    def __init__(self, stack: Stack, queue: str, tasks: int, max_waiting: int):
        super().__init__(daemon=True)
        self.stack, self.queue, self.tasks, self.max_waiting = stack, queue, tasks, max_waiting
        self.ids: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with client_for(self.stack, self.queue) as client:
            while len(self.ids) < self.tasks and not self.stopping.is_set():
                if self.stack.redis.llen(self.queue) >= self.max_waiting:
                    time.sleep(0.05)
                    continue
                count = min(CHUNK // 2, self.tasks - len(self.ids))
                self.ids += submit(client, count, len(self.ids))


def soak(
    stack: Stack,
    mode: str,
    tasks: int,
    concurrency: int,
    sample_seconds: float,
    warmup_fraction: float,
    max_waiting: int = 2000,
) -> dict[str, Any]:
    spec = mode_spec(mode, concurrency)
    stack.reset_aws()
    queue = stack.new_queue(mode)
    worker = start_worker(stack, spec, queue)
    feeder = Feeder(stack, queue, tasks, max_waiting)
    first = stack.callbacks
    samples: list[tuple[float, int, float, float]] = []
    started = last_progress = time.monotonic()
    try:
        samples.append((0.0, 0, *tree_memory(worker.pid)))
        feeder.start()
        with progress(f"soak {mode}", tasks) as (bar, task):
            done = 0
            while done < tasks and worker.running:
                time.sleep(sample_seconds)
                now = time.monotonic()
                count = stack.callbacks - first
                if count > done:
                    done, last_progress = count, now
                elif now - last_progress > STALL_SECONDS:
                    break
                samples.append((now - started, done, *tree_memory(worker.pid)))
                bar.update(task, completed=done)
        elapsed = time.monotonic() - started
        feeder.stopping.set()
        feeder.join(timeout=60)
        final = wait_results(stack, feeder.ids, timeout=60, alive=lambda: worker.running)
    finally:
        feeder.stopping.set()
        worker.stop(timeout=120)
    failed = sum(m.get("status") != "SUCCESS" for m in final.values())
    log = worker.log()
    after = [s for s in samples if s[1] >= warmup_fraction * done]
    if spec.impl == "forwarder":
        reports = sink_reports(log)
        sent = sum(r["sent"] for r in reports)
        calls = sum(r["put_calls"] for r in reports) / max(sent, 1)
        assume_role = [int(r["client_builds"]) for r in reports]
    else:
        reports = baseline_reports(log)
        calls = sum(r["puts"] for r in reports) / max(done, 1)
        assume_role = [int(r["assume_role"]) for r in reports]
    return {
        "mode": mode,
        "spec": spec.__dict__,
        "tasks": done,
        "tasks_per_s": done / elapsed,
        "elapsed": elapsed,
        "peak_rss_mib": max((s[2] for s in samples), default=0.0),
        "rss_slope_mib_per_100k": 1e5 * slope([(s[1], s[2]) for s in after]),
        "pss_slope_mib_per_100k": 1e5 * slope([(s[1], s[3]) for s in after]),
        "errors": failed + tasks - len(final),
        "firehose_calls_per_record": calls,
        "assume_role_per_process": assume_role,
        "lifetimes": math.ceil(elapsed / (spec.credential_seconds - spec.leeway)),
        "samples": [list(s) for s in samples],
    }


def run(
    stack: Stack,
    tasks: int = 200_000,
    per_task_tasks: int = 20_000,
    concurrency: int = 16,
    sample_seconds: float = 5.0,
    warmup_fraction: float = 0.2,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    rows = [
        soak(
            stack,
            mode,
            per_task_tasks if mode == "per-task-client" else tasks,
            concurrency,
            sample_seconds,
            warmup_fraction,
        )
        for mode in modes
    ]
    return {"concurrency": concurrency, "warmup_fraction": warmup_fraction, "modes": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"concurrency {result['concurrency']}, instant model, callback and Firehose record per "
        f"task; slopes after the first {result['warmup_fraction']:.0%} of tasks",
        "",
        "| mode | tasks | tasks/s | peak RSS MiB | RSS MiB/100k tasks | PSS MiB/100k tasks "
        "| errors | Firehose calls/record | AssumeRole per process | lifetimes in run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["modes"]:
        lines.append(
            f"| {row['mode']} | {row['tasks']} | {row['tasks_per_s']:.0f} "
            f"| {row['peak_rss_mib']:.0f} | {row['rss_slope_mib_per_100k']:.2f} "
            f"| {row['pss_slope_mib_per_100k']:.2f} | {row['errors']} "
            f"| {row['firehose_calls_per_record']:.4f} "
            f"| {per_process(row['assume_role_per_process'])} | {row['lifetimes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--per-task-tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    with Stack() as stack:
        result = run(
            stack,
            args.tasks,
            args.per_task_tasks,
            args.concurrency,
            args.sample_seconds,
            args.warmup_fraction,
            tuple(args.modes.split(",")),
        )
    print(table(result))


if __name__ == "__main__":
    main()
