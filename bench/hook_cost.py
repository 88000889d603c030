"""What the post-inference hooks cost a worker, against the same worker without hooks, in one run.

For each pool, our worker without hooks and with the callback and the Firehose logging hook
(assumed role with short credentials), then the plain-Celery baseline with the same callback and
a Firehose record per task, with a cached client and with one built per task. Reports tasks/s
with and without hooks, time per task in each hook, Firehose API calls per record, and
AssumeRole calls per worker process against the number of credential lifetimes the run lasted.
Every worker gets its tasks prefilled (see ``load.py``).

    .venv/bin/python bench/hook_cost.py --tasks 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from harness import (
    Stack,
    WorkerSpec,
    baseline_reports,
    delivered_records,
    hook_seconds,
    per_process,
    sink_reports,
)
from load import run_prefilled

BASELINE_MODES = ("cached", "per-task")


def ours(stack: Stack, spec: WorkerSpec, tasks: int, lifetime: float) -> dict[str, Any]:
    plain = run_prefilled(stack, WorkerSpec("forwarder", spec.pool, spec.concurrency), tasks)
    hooked = run_prefilled(stack, spec, tasks)
    log = hooked.pop("log")
    callback_n, callback_s = hook_seconds(log, "callback")
    logging_n, logging_s = hook_seconds(log, "logging")
    reports = sink_reports(log)
    sent = sum(r["sent"] for r in reports)
    return {
        "pool": spec.pool,
        "plain_tasks_per_s": plain["tasks_per_s"],
        "hooks_tasks_per_s": hooked["tasks_per_s"],
        "callback_ms": 1000 * callback_s / max(callback_n, 1),
        "logging_ms": 1000 * logging_s / max(logging_n, 1),
        "records_sent": sent,
        "calls_per_record": sum(r["put_calls"] for r in reports) / max(sent, 1),
        "assume_role_per_process": [int(r["client_builds"]) for r in reports],
        "lifetimes": math.ceil(hooked["elapsed"] / lifetime),
        "failed": plain["failed"] + hooked["failed"],
    }


def baseline(stack: Stack, pool: str, concurrency: int, mode: str, tasks: int) -> dict[str, Any]:
    spec = WorkerSpec("baseline", pool, concurrency, callback=True, firehose=mode)
    run = run_prefilled(stack, spec, tasks)
    reports = baseline_reports(run.pop("log"))
    puts = sum(r["puts"] for r in reports)
    return {
        "pool": pool,
        "mode": mode,
        "tasks_per_s": run["tasks_per_s"],
        "firehose_ms": 1000 * sum(r["seconds"] for r in reports) / max(puts, 1),
        "records_sent": puts,
        "calls_per_record": puts / tasks,
        "assume_role_per_process": [int(r["assume_role"]) for r in reports],
        "failed": run["failed"],
    }


def run(
    stack: Stack,
    tasks: int = 2000,
    concurrency: int = 8,
    pools: tuple[str, ...] = ("prefork", "gevent"),
    credential_seconds: int = 8,
    leeway: float = 3.0,
) -> dict[str, Any]:
    stack.reset_aws()
    rows, baselines = [], []
    for pool in pools:
        spec = WorkerSpec(
            "forwarder",
            pool,
            concurrency,
            callback=True,
            firehose="sink",
            credential_seconds=credential_seconds,
            leeway=leeway,
        )
        rows.append(ours(stack, spec, tasks, credential_seconds - leeway))
        baselines += [baseline(stack, pool, concurrency, mode, tasks) for mode in BASELINE_MODES]
    sent = sum(row["records_sent"] for row in rows + baselines)
    return {
        "tasks": tasks,
        "concurrency": concurrency,
        "credential_seconds": credential_seconds,
        "leeway": leeway,
        "ours": rows,
        "baseline": baselines,
        "records_sent": int(sent),
        "records_delivered": delivered_records(stack.moto_endpoint),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['tasks']} tasks per worker, concurrency {result['concurrency']}, instant model; "
        f"credentials of {result['credential_seconds']} s rebuilt {result['leeway']:g} s "
        "before expiry",
        "",
        "| pool | no hooks tasks/s | hooks tasks/s | ratio | callback ms/task | logging ms/task "
        "| Firehose calls/record | AssumeRole per process | lifetimes in run | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["ours"]:
        lines.append(
            f"| {row['pool']} | {row['plain_tasks_per_s']:.0f} | {row['hooks_tasks_per_s']:.0f} "
            f"| {row['hooks_tasks_per_s'] / max(row['plain_tasks_per_s'], 1e-9):.2f} "
            f"| {row['callback_ms']:.2f} | {row['logging_ms']:.3f} "
            f"| {row['calls_per_record']:.4f} "
            f"| {per_process(row['assume_role_per_process'])} "
            f"| {row['lifetimes']} | {row['failed']} |"
        )
    lines += [
        "",
        "Baseline (plain Celery, callback and a Firehose record per task):",
        "",
        "| pool | Firehose client | tasks/s | Firehose ms/task | Firehose calls/record "
        "| AssumeRole per process | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["baseline"]:
        lines.append(
            f"| {row['pool']} | {row['mode']} | {row['tasks_per_s']:.0f} "
            f"| {row['firehose_ms']:.3f} | {row['calls_per_record']:.4f} "
            f"| {per_process(row['assume_role_per_process'])} | {row['failed']} |"
        )
    lines += [
        "",
        f"records in the bucket: {result['records_delivered']} of {result['records_sent']} sent",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--credential-seconds", type=int, default=8)
    parser.add_argument("--leeway", type=float, default=3.0)
    parser.add_argument("--pools", default="prefork,gevent")
    args = parser.parse_args()
    with Stack() as stack:
        result = run(
            stack,
            args.tasks,
            args.concurrency,
            tuple(args.pools.split(",")),
            args.credential_seconds,
            args.leeway,
        )
    print(table(result))


if __name__ == "__main__":
    main()
