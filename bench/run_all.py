"""Every benchmark stage in one run, against one set of services: the tables, the charts, the raw data.

Runs the soak, the pool memory, throughput and instant-model stages and the hook cost, each
comparing our worker with the plain-Celery baseline (``baseline_app.py``) measured minutes apart
on the same machine, and writes into ``--out``: ``results.json`` (every raw figure and the
machine), ``tables.md`` (a table per stage and the targets, met or not) and the PNG charts.
The full run takes about 50 minutes; ``--short`` runs every stage with tiny sizes in about two.
Tasks a worker never finishes are counted failed once none has finished for two minutes.

    .venv/bin/python bench/run_all.py --out docs/benchmarks
    .venv/bin/python bench/run_all.py --short --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celery
import hook_cost
import plots
import pools
import psutil
import soak
import targets
from harness import MIB, Stack

ROOT = Path(__file__).resolve().parents[1]

# Every stage's sizes, full and short; the short mode keeps one or two configurations a stage.
FULL: dict[str, dict[str, Any]] = {
    "soak": {"tasks": 200_000, "per_task_tasks": 20_000, "concurrency": 16, "sample_seconds": 5},
    "pools_memory": {"concurrencies": (4, 16, 64), "tasks": 1000},
    "throughput": {"concurrencies": (8, 32, 64), "seconds": 12.0, "minimum": 1000},
    "instant": {"configs": (("gevent", 32), ("prefork", 2)), "tasks": 10_000},
    "hook_cost": {"tasks": 2000, "concurrency": 8, "pools": ("prefork", "gevent")},
}
SHORT: dict[str, dict[str, Any]] = {
    "soak": {"tasks": 300, "per_task_tasks": 100, "concurrency": 2, "sample_seconds": 1},
    "pools_memory": {"concurrencies": (2,), "tasks": 100},
    "throughput": {"concurrencies": (4,), "seconds": 1.0, "minimum": 100, "pools": ("gevent",)},
    "instant": {"configs": (("gevent", 4), ("prefork", 2)), "tasks": 200},
    "hook_cost": {"tasks": 40, "concurrency": 2, "pools": ("gevent",)},
}
STAGES: dict[str, Callable[..., Any]] = {
    "soak": soak.run,
    "pools_memory": pools.memory,
    "throughput": pools.throughput,
    "instant": pools.instant,
    "hook_cost": hook_cost.run,
}


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_mib": round(psutil.virtual_memory().total / MIB),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def tables(results: dict[str, Any]) -> str:
    info = results["machine"]
    sections = [
        "# Benchmark results",
        f"{info['date']}, {info['cores']} cores, {info['memory_mib']} MiB, Python "
        f"{info['python']}, Celery {info['celery']}{' (short mode)' if results['short'] else ''}. "
        "Baseline: plain Celery (`bench/baseline_app.py`) in the same run.",
        "## Targets",
        targets.table(results["targets"]),
        "## Soak: memory against tasks done",
        soak.table(results["soak"]),
        "## Worker memory per pool and concurrency (instant model, callback and Firehose)",
        pools.memory_table(results["pools_memory"]),
        "## Throughput with a 50 ms model (ours: logging hook; baseline: cached Firehose client)",
        pools.throughput_table(results["throughput"]),
        "## Instant model, no hooks",
        pools.instant_table(results["instant"]),
        "## Post-inference hooks: what they cost",
        hook_cost.table(results["hook_cost"]),
        "## Stage durations",
        "\n".join(f"- {name}: {seconds:.0f} s" for name, seconds in results["durations"].items()),
    ]
    return "\n\n".join(sections) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--short", action="store_true", help="tiny sizes, about two minutes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = SHORT if args.short else FULL
    results: dict[str, Any] = {"machine": machine(), "short": args.short, "durations": {}}
    with Stack() as stack:
        for name, stage in STAGES.items():
            started = time.monotonic()
            results[name] = stage(stack, **sizes[name])
            results["durations"][name] = time.monotonic() - started
            # Written after every stage, so a run that fails late keeps what it measured.
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    results["targets"] = targets.evaluate(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plots.write_all(results, args.out)
    (args.out / "tables.md").write_text(tables(results))
    print(tables(results))


if __name__ == "__main__":
    main()
