"""Where a prefork worker's time goes: each process's CPU over one drain, ours beside plain Celery.

Drains ``--tasks`` prefilled tasks on the instant model with a prefork worker (concurrency 2 by
default), the forwarder's and then plain Celery's (``baseline_app.py``), and prints, for each,
the tasks/s and every process's CPU over the drain: the pool's parent, each child, Redis and
the model server. A process's share of a core says how busy it was: a child well under one
core waits, for its next job or for a reply, and CPU per task is then not what limits tasks/s.

    .venv/bin/python bench/process_cpu.py                 # 5,000 tasks, 3 rounds, ~2 min
    .venv/bin/python bench/process_cpu.py --tasks 100 --rounds 1 --json out.json  # the smoke test's
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
from harness import Stack, WorkerSpec, cpu_seconds, start_worker, tree_processes
from load import prefill, rate, wait_results


def drain(stack: Stack, spec: WorkerSpec, tasks: int) -> dict[str, Any]:
    """One drain of ``tasks`` prefilled tasks: tasks/s, and each process's CPU over it."""
    queue = stack.new_queue(spec.label)
    ids = prefill(stack, queue, tasks)
    worker = start_worker(stack, spec, queue)
    try:
        pool = tree_processes(worker.pid)
        names = ["parent"] + [f"child {n}" for n in range(1, len(pool))]
        services = {name: psutil.Process(child.pid) for name, child in stack.services.items()}
        processes = dict(zip(names, pool, strict=True)) | services
        before = {name: cpu_seconds(process) for name, process in processes.items()}
        started = time.monotonic()
        done = wait_results(stack, ids, timeout=600, alive=lambda: worker.running)
        seconds = time.monotonic() - started
        spent = {name: cpu_seconds(process) - before[name] for name, process in processes.items()}
    finally:
        worker.stop(timeout=60)
    return {
        "impl": spec.impl,
        "tasks_per_s": rate(list(done.values())),
        "failed": tasks - sum(meta.get("status") == "SUCCESS" for meta in done.values()),
        "cores": {name: cpu / seconds for name, cpu in spent.items()},
        "ms_per_task": {name: 1000 * cpu / tasks for name, cpu in spent.items()},
        "worker_ms_per_task": 1000 * sum(spent[name] for name in names) / tasks,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median tasks/s (a whole run, so its processes' figures stay together)."""
    return sorted(runs, key=lambda run: run["tasks_per_s"])[len(runs) // 2]


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| worker | tasks/s | failed | process | cores busy | CPU ms per task |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        label = "forwarder" if run["impl"] == "forwarder" else "plain Celery"
        heading = f"| {label} | {run['tasks_per_s']:.0f} | {run['failed']} |"
        for name in run["cores"]:
            lines.append(
                f"{heading} {name} | {run['cores'][name]:.2f} | {run['ms_per_task'][name]:.3f} |"
            )
            heading = "| | | |"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also every run, as JSON")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"forwarder": [], "baseline": []}
    with Stack(aws=False) as stack:
        for _ in range(args.rounds):
            for impl, done in runs.items():
                spec = WorkerSpec(impl, "prefork", args.concurrency)
                done.append(drain(stack, spec, args.tasks))
    medians = [median_run(done) for done in runs.values()]
    print(table(medians))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    ratios = [
        ours["tasks_per_s"] / plain["tasks_per_s"]
        for ours, plain in zip(runs["forwarder"], runs["baseline"], strict=True)
        if plain["tasks_per_s"]
    ]
    if ratios:
        median = statistics.median(ratios)
        print(f"\nforwarder / plain Celery tasks/s, median of {len(ratios)} rounds: {median:.2f}x")


if __name__ == "__main__":
    main()
