"""Worker memory and throughput per pool and concurrency, ours against the plain-Celery baseline.

- memory: prefilled tasks on the instant model, with callback and Firehose records; the worker
  tree's RSS and PSS once they are done.
- throughput: a 50 ms model, our worker with the logging hook against the baseline with a cached
  Firehose client; tasks/s against the ideal concurrency / latency, and CPU per task.
- instant: the instant model without hooks, where the worker's own cost per task is the limit.

    .venv/bin/python bench/pools.py --stages memory,throughput,instant
"""

from __future__ import annotations

import argparse
from typing import Any

from harness import MODEL_DELAY, Stack, WorkerSpec
from load import run_prefilled

POOLS = ("prefork", "gevent")
IMPLS = ("forwarder", "baseline")


def measured(stack: Stack, spec: WorkerSpec, tasks: int) -> dict[str, Any]:
    result = run_prefilled(stack, spec, tasks)
    del result["log"]
    return result


def memory(
    stack: Stack, concurrencies: tuple[int, ...], tasks: int, pools: tuple[str, ...] = POOLS
) -> list[dict[str, Any]]:
    rows = []
    for pool in pools:
        for concurrency in concurrencies:
            for impl in IMPLS:
                firehose = "sink" if impl == "forwarder" else "cached"
                spec = WorkerSpec(impl, pool, concurrency, callback=True, firehose=firehose)
                rows.append(measured(stack, spec, tasks))
    return rows


def throughput(
    stack: Stack,
    concurrencies: tuple[int, ...],
    seconds: float,
    minimum: int,
    pools: tuple[str, ...] = POOLS,
) -> list[dict[str, Any]]:
    rows = []
    for pool in pools:
        for concurrency in concurrencies:
            tasks = max(minimum, int(seconds * concurrency / MODEL_DELAY))
            for impl in IMPLS:
                firehose = "sink" if impl == "forwarder" else "cached"
                spec = WorkerSpec(impl, pool, concurrency, firehose=firehose, slow_model=True)
                rows.append(measured(stack, spec, tasks))
    return rows


def instant(stack: Stack, configs: tuple[tuple[str, int], ...], tasks: int) -> list[dict[str, Any]]:
    return [
        measured(stack, WorkerSpec(impl, pool, concurrency), tasks)
        for pool, concurrency in configs
        for impl in IMPLS
    ]


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(ours, baseline) for each pool and concurrency, in the order measured."""
    by_key = {(r["spec"]["impl"], r["spec"]["pool"], r["spec"]["concurrency"]): r for r in rows}
    return [
        (row, by_key[("baseline", row["spec"]["pool"], row["spec"]["concurrency"])])
        for row in rows
        if row["spec"]["impl"] == "forwarder"
        and ("baseline", row["spec"]["pool"], row["spec"]["concurrency"]) in by_key
    ]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def memory_table(rows: list[dict[str, Any]]) -> str:
    prefork = {
        r["spec"]["concurrency"]: r
        for r in rows
        if r["spec"]["impl"] == "forwarder" and r["spec"]["pool"] == "prefork"
    }
    lines = [
        "| pool | concurrency | tree RSS MiB | tree PSS MiB | baseline RSS MiB | baseline PSS MiB "
        "| forwarder / baseline RSS | gevent / prefork RSS | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, base in pairs(rows):
        spec = ours["spec"]
        versus = prefork.get(spec["concurrency"]) if spec["pool"] == "gevent" else None
        lines.append(
            f"| {spec['pool']} | {spec['concurrency']} | {ours['rss_mib']:.0f} "
            f"| {ours['pss_mib']:.0f} | {base['rss_mib']:.0f} | {base['pss_mib']:.0f} "
            f"| {ratio(ours['rss_mib'], base['rss_mib'])} "
            f"| {ratio(ours['rss_mib'], versus['rss_mib']) if versus else '-'} "
            f"| {ours['failed'] + base['failed']} |"
        )
    return "\n".join(lines)


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pool | concurrency | tasks | tasks/s | ideal C/latency | % of ideal "
        "| effective concurrency | CPU ms/task | baseline tasks/s | baseline CPU ms/task "
        "| forwarder / baseline | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, base in pairs(rows):
        spec = ours["spec"]
        ideal = spec["concurrency"] / MODEL_DELAY
        lines.append(
            f"| {spec['pool']} | {spec['concurrency']} | {ours['tasks']} "
            f"| {ours['tasks_per_s']:.0f} | {ideal:.0f} | {100 * ours['tasks_per_s'] / ideal:.0f}% "
            f"| {ours['tasks_per_s'] * MODEL_DELAY:.1f} | {ours['cpu_ms_per_task']:.2f} "
            f"| {base['tasks_per_s']:.0f} | {base['cpu_ms_per_task']:.2f} "
            f"| {ratio(ours['tasks_per_s'], base['tasks_per_s'])} "
            f"| {ours['failed'] + base['failed']} |"
        )
    return "\n".join(lines)


def instant_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pool | concurrency | tasks | tasks/s | CPU ms/task | baseline tasks/s "
        "| baseline CPU ms/task | forwarder / baseline | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, base in pairs(rows):
        spec = ours["spec"]
        lines.append(
            f"| {spec['pool']} | {spec['concurrency']} | {ours['tasks']} "
            f"| {ours['tasks_per_s']:.0f} | {ours['cpu_ms_per_task']:.2f} "
            f"| {base['tasks_per_s']:.0f} | {base['cpu_ms_per_task']:.2f} "
            f"| {ratio(ours['tasks_per_s'], base['tasks_per_s'])} "
            f"| {ours['failed'] + base['failed']} |"
        )
    return "\n".join(lines)


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stages", default="memory,throughput,instant")
    parser.add_argument("--memory-concurrency", type=integers, default=(4, 16, 64))
    parser.add_argument("--memory-tasks", type=int, default=1000)
    parser.add_argument("--throughput-concurrency", type=integers, default=(8, 32, 64))
    parser.add_argument("--seconds", type=float, default=12.0, help="of the ideal rate per run")
    parser.add_argument("--min-tasks", type=int, default=1000)
    parser.add_argument("--instant-tasks", type=int, default=10_000)
    args = parser.parse_args()
    stages = args.stages.split(",")
    with Stack() as stack:
        if "memory" in stages:
            print(memory_table(memory(stack, args.memory_concurrency, args.memory_tasks)), "\n")
        if "throughput" in stages:
            rows = throughput(stack, args.throughput_concurrency, args.seconds, args.min_tasks)
            print(throughput_table(rows), "\n")
        if "instant" in stages:
            configs = (("gevent", 32), ("prefork", 2))
            print(instant_table(instant(stack, configs, args.instant_tasks)))


if __name__ == "__main__":
    main()
