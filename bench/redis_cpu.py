"""CPU per task on the Redis broker: the floor loop, the forwarder's worker and plain Celery, one run.

The floor loop (``--floor``, a process of its own) does only what every worker must do for a
task: BRPOP one message, POST its payload to the model over one keep-alive urllib3 connection
(the forwarder's model client is urllib3 too), store the result with one SET. Each row drains a
prefilled queue; CPU is the whole process tree's (main process and pool children) over the drain,
divided by the tasks. Rows: the forwarder and plain Celery (``baseline_app.py``) at gevent c=32
and prefork c=2 on the instant model, and both at gevent c=32 on the 50 ms model (ideal:
c / 50 ms = 640 tasks/s).

The machine's speed drifts within minutes, so every row runs ``--rounds`` times, each time right
after a floor loop of its own, and reports medians: of its tasks/s and CPU, of its CPU over that
floor's, and of its tasks/s over plain Celery's row of the same round.

    .venv/bin/python bench/redis_cpu.py                  # 3 rounds of 3,000 tasks per row, ~8 min
    .venv/bin/python bench/redis_cpu.py --short          # the smoke test's: 60 tasks, 1 round
    .venv/bin/python bench/redis_cpu.py --json out.json  # also the rows, and every round, as JSON
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import urllib3
from harness import MODEL_DELAY, Stack, WorkerSpec
from load import prefill, rate, run_prefilled, wait_results

from forwarder.devtools.localrun import HOST, Child

ROWS_FULL = (
    ("forwarder", "gevent", 32, False),
    ("baseline", "gevent", 32, False),
    ("forwarder", "prefork", 2, False),
    ("baseline", "prefork", 2, False),
    ("forwarder", "gevent", 32, True),
    ("baseline", "gevent", 32, True),
)
ROWS_SHORT = (("forwarder", "gevent", 32, False), ("baseline", "gevent", 32, False))


def floor_loop(broker: str, queue: str, model_url: str, count: int) -> None:
    """BRPOP, POST, SET: ``count`` tasks; prints its CPU seconds from the first pop to the end."""
    conn = redis.Redis.from_url(broker)
    http = urllib3.HTTPConnectionPool(HOST, int(model_url.split(":")[2].split("/")[0]), maxsize=1)
    path = "/" + model_url.split("/", 3)[3]
    started = None
    for _ in range(count):
        _, raw = conn.brpop([queue], timeout=0)  # type: ignore[misc]
        started = time.process_time() if started is None else started
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        payload = args[0] if args else {}
        body = payload.get("args", payload) if isinstance(payload, dict) else payload
        reply = http.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        meta = {
            "status": "SUCCESS",
            "result": {"result": json.loads(reply.data), "status_code": reply.status},
            "task_id": message["headers"]["id"],
            "date_done": datetime.now(UTC).isoformat(),
        }
        conn.set(f"celery-task-meta-{meta['task_id']}", json.dumps(meta))
    print(f"floor cpu_seconds={time.process_time() - (started or 0.0)}", flush=True)


def measure_floor(stack: Stack, tasks: int) -> dict[str, Any]:
    queue = stack.new_queue("floor")
    ids = prefill(stack, queue, tasks)
    model_url = f"http://{HOST}:{stack.model_port}/predict"
    command = [sys.executable, __file__, "--floor", stack.broker, queue, model_url, str(tasks)]
    child = Child(command, stack.folder / "floor.log")
    try:
        done = wait_results(stack, ids, timeout=600, alive=lambda: child.running)
        cpu = float(child.wait_for(r"floor cpu_seconds=(\S+)", timeout=60).group(1))
    finally:
        child.stop(timeout=30)
    return row("floor", "-", 1, False, tasks, done, cpu)


def row(
    impl: str, pool: str, concurrency: int, slow: bool, tasks: int, done: dict[str, Any], cpu: float
) -> dict[str, Any]:
    return {
        "impl": impl,
        "pool": pool,
        "concurrency": concurrency,
        "model": f"{int(MODEL_DELAY * 1000)} ms" if slow else "instant",
        "tasks": tasks,
        "failed": tasks - sum(m.get("status") == "SUCCESS" for m in done.values()),
        "tasks_per_s": rate(list(done.values())),
        "cpu_ms_per_task": 1000 * cpu / tasks,
    }


def measure(stack: Stack, spec: tuple[str, str, int, bool], tasks: int) -> dict[str, Any]:
    impl, pool, concurrency, slow = spec
    result = run_prefilled(stack, WorkerSpec(impl, pool, concurrency, slow_model=slow), tasks)
    out = row(impl, pool, concurrency, slow, tasks, {}, result["cpu_ms_per_task"] * tasks / 1000)
    out["failed"], out["tasks_per_s"] = result["failed"], result["tasks_per_s"]
    return out


def summarize(rounds: list[list[tuple[dict[str, Any], dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per kind (the floor first): medians over the rounds of (row, its floor) pairs."""
    floors = [floor for pairs in rounds for _, floor in pairs]
    rows = [_median_row(floors) | {"cpu_vs_floor": 1.0, "vs_plain": None}]
    for kind in range(len(rounds[0])):
        runs = [pairs[kind][0] for pairs in rounds]
        against_plain = [_plain_ratio(pairs, pairs[kind][0]) for pairs in rounds]
        rows.append(
            _median_row(runs)
            | {
                "cpu_vs_floor": statistics.median(
                    r["cpu_ms_per_task"] / f["cpu_ms_per_task"]
                    for r, f in (p[kind] for p in rounds)
                ),
                "vs_plain": statistics.median(against_plain) if None not in against_plain else None,
            }
        )
    return rows


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return runs[0] | {
        "rounds": len(runs),
        "failed": sum(r["failed"] for r in runs),
        "tasks_per_s": statistics.median(r["tasks_per_s"] for r in runs),
        "cpu_ms_per_task": statistics.median(r["cpu_ms_per_task"] for r in runs),
        "runs": [{k: r[k] for k in ("tasks_per_s", "cpu_ms_per_task", "failed")} for r in runs],
    }


def _plain_ratio(pairs: list[tuple[dict[str, Any], dict[str, Any]]], ours: dict[str, Any]) -> Any:
    kind = (ours["pool"], ours["concurrency"], ours["model"])
    plain = [
        r
        for r, _ in pairs
        if r["impl"] == "baseline" and (r["pool"], r["concurrency"], r["model"]) == kind
    ]
    return ours["tasks_per_s"] / plain[0]["tasks_per_s"] if plain else None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| worker | model | tasks/s | CPU ms/task | CPU vs floor | tasks/s vs plain Celery |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = {"forwarder": "forwarder", "baseline": "plain Celery"}.get(r["impl"])
        worker = f"{name} {r['pool']} c={r['concurrency']}" if name else "floor loop"
        vs_plain = f"{r['vs_plain']:.2f}x" if r["vs_plain"] is not None else "-"
        lines.append(
            f"| {worker} | {r['model']} "
            f"| {r['tasks_per_s']:.0f} | {r['cpu_ms_per_task']:.2f} "
            f"| {r['cpu_vs_floor']:.2f}x | {vs_plain} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--floor", nargs=4, metavar=("BROKER", "QUEUE", "MODEL_URL", "COUNT"))
    args = parser.parse_args()
    if args.floor:
        broker, queue, model_url, count = args.floor
        floor_loop(broker, queue, model_url, int(count))
        return
    tasks, rounds = (60, 1) if args.short else (args.tasks, args.rounds)
    specs = ROWS_SHORT if args.short else ROWS_FULL
    measured = []
    with Stack(aws=False) as stack:
        for _ in range(rounds):
            pairs = []
            for spec in specs:
                floor = measure_floor(stack, tasks)
                pairs.append((measure(stack, spec, tasks), floor))
            measured.append(pairs)
    rows = summarize(measured)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
