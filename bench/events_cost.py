"""What ``--events`` costs the broker: Redis commands and PUBLISHes per task, against events off.

For each pool, one worker without events and one with ``--events`` drain the same number of
prefilled tasks from the same throwaway Redis (see ``load.py``). Redis counts every command it
serves (``INFO commandstats``); the benchmark's own reads of the results (one MGET per chunk of
ids per poll, and the INFO calls) are counted here and taken out, so what is left is the worker's.

    .venv/bin/python bench/events_cost.py --tasks 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from harness import Stack, WorkerSpec, start_worker, tree_cpu_seconds
from load import CHUNK, prefill, rate, stored

from forwarder.protocol import FINAL_STATES

POLL_SECONDS = 0.5


def command_counts(stack: Stack) -> dict[str, int]:
    stats = stack.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def drain(stack: Stack, ids: list[str], timeout: float) -> tuple[dict[str, Any], int]:
    """Every task's final meta, and how many MGETs the polling sent."""
    done: dict[str, Any] = {}
    pending, mgets = list(ids), 0
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        mgets += -(-len(pending) // CHUNK)
        done |= {i: m for i, m in stored(stack, pending).items() if m.get("status") in FINAL_STATES}
        pending = [i for i in pending if i not in done]
    return done, mgets


def measured(stack: Stack, spec: WorkerSpec, tasks: int, timeout: float) -> dict[str, Any]:
    queue = stack.new_queue(spec.label + ("-events" if spec.extra_args else ""))
    ids = prefill(stack, queue, tasks)
    before = command_counts(stack)
    worker = start_worker(stack, spec, queue)
    try:
        cpu_before = tree_cpu_seconds(worker.pid)
        done, mgets = drain(stack, ids, timeout)
        cpu = tree_cpu_seconds(worker.pid) - cpu_before
        after = command_counts(stack)
    finally:
        worker.stop(timeout=60)
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta["mget"] = delta.get("mget", 0) - mgets
    delta["info"] = delta.get("info", 0) - 1  # the second snapshot
    commands = sum(delta.values())
    return {
        "pool": spec.pool,
        "events": bool(spec.extra_args),
        "tasks_per_s": rate(list(done.values())),
        "commands_per_task": commands / tasks,
        "publish_per_task": delta.get("publish", 0) / tasks,
        "cpu_ms_per_task": 1000 * cpu / tasks,
        "failed": sum(m.get("status") != "SUCCESS" for m in done.values()) + tasks - len(done),
    }


def run(
    stack: Stack,
    tasks: int = 2000,
    concurrency: int = 8,
    pools: tuple[str, ...] = ("prefork", "gevent"),
    timeout: float = 600,
) -> dict[str, Any]:
    rows = []
    for pool in pools:
        for extra in ((), ("--events",)):
            spec = WorkerSpec("forwarder", pool, concurrency, extra_args=extra)
            rows.append(measured(stack, spec, tasks, timeout))
    return {"tasks": tasks, "concurrency": concurrency, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['tasks']} tasks per worker, concurrency {result['concurrency']}, instant model",
        "",
        "| pool | events | tasks/s | Redis commands/task | PUBLISH/task | CPU ms/task "
        "| commands ratio | tasks/s ratio | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    off: dict[str, dict[str, Any]] = {}
    for row in result["rows"]:
        base = off.setdefault(row["pool"], row)
        lines.append(
            f"| {row['pool']} | {'on' if row['events'] else 'off'} | {row['tasks_per_s']:.0f} "
            f"| {row['commands_per_task']:.2f} | {row['publish_per_task']:.2f} "
            f"| {row['cpu_ms_per_task']:.2f} "
            f"| {row['commands_per_task'] / max(base['commands_per_task'], 1e-9):.2f} "
            f"| {row['tasks_per_s'] / max(base['tasks_per_s'], 1e-9):.2f} | {row['failed']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--pools", default="prefork,gevent")
    parser.add_argument("--short", action="store_true", help="40 tasks, gevent, concurrency 2")
    args = parser.parse_args()
    if args.short:
        args.tasks, args.concurrency, args.pools = 40, 2, "gevent"
    with Stack(aws=False) as stack:
        result = run(stack, args.tasks, args.concurrency, tuple(args.pools.split(",")))
    print(table(result))


if __name__ == "__main__":
    main()
