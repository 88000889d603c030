"""Gateway latency and throughput under a bounded local load.

Starts a throwaway redis-server and the gateway (``python -m forwarder gateway``, one uvicorn
process), then sends ``--requests`` requests of each kind from ``--threads`` threads, each with
its own keep-alive session: plain submits, submits with a fresh ``Idempotency-Key`` each (the
claim's cost), and reads of the submitted tasks. No worker runs: the submits measure the gateway
and the broker, not the model. Reports p50 / p99 / max latency, requests/s and the gateway's CPU
time per request. Load generator and gateway share the machine's cores.

    .venv/bin/python bench/gateway_load.py --requests 2000 --threads 8
    .venv/bin/python bench/gateway_load.py --short
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests

from forwarder.devtools.localrun import HOST, start_forwarder, start_redis

BODY = {"args": {"prompt": "hello", "max_tokens": 16}, "ttl_seconds": 600}
WARMUP_REQUESTS = 50


def run_phase(
    url: str, threads: int, count: int, call: Callable[[requests.Session, int], requests.Response]
) -> dict[str, Any]:
    """``count`` calls spread over ``threads`` threads; latencies in seconds, and failures."""
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        mine: list[float] = []
        failed = []
        with requests.Session() as session:
            barrier.wait()
            while (n := next(counter)) < count:
                started = time.perf_counter()
                reply = call(session, n)
                mine.append(time.perf_counter() - started)
                if reply.status_code != 200:
                    failed.append(reply.status_code)
        with lock:
            latencies.extend(mine)
            failures.extend(failed)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join(timeout=600)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "count": len(latencies),
        "elapsed": elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind")
    parser.add_argument("--threads", type=int, default=8, help="client threads (sessions)")
    parser.add_argument("--short", action="store_true", help="200 requests, 4 threads")
    args = parser.parse_args()
    if args.short:
        args.requests, args.threads = 200, 4
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as name:
        folder = Path(name)
        redis, redis_port = start_redis(folder)
        gateway = start_forwarder(
            [
                "gateway", "--host", HOST, "--port", "0",
                "--broker-url", f"redis://{HOST}:{redis_port}/0", "--queue", "bench",
            ],
            folder / "gateway.log",
        )  # fmt: skip
        try:
            url = gateway.wait_for(r"gateway listening on (http://127\.0\.0\.1:\d+)").group(1)
            rows = measure(url, args, psutil.Process(gateway.pid))
        finally:
            gateway.stop()
            redis.stop()
    print(
        f"{args.requests} requests of each kind from {args.threads} threads "
        "(keep-alive sessions), one gateway process, Redis broker, no worker"
    )
    print()
    print("| request | requests/s | p50 ms | p99 ms | max ms | gateway CPU ms/request | failed |")
    print("|---|---|---|---|---|---|---|")
    for label, row in rows:
        print(
            f"| {label} | {row['count'] / row['elapsed']:.0f} | {1000 * row['p50']:.2f} "
            f"| {1000 * row['p99']:.2f} | {1000 * row['max']:.2f} "
            f"| {1000 * row['cpu'] / row['count']:.2f} | {len(row['failures'])} |"
        )


def measure(url: str, args: argparse.Namespace, process: psutil.Process) -> list[tuple[str, Any]]:
    submitted: list[str] = [""] * args.requests
    run_key = uuid.uuid4().hex

    def submit(session: requests.Session, n: int) -> requests.Response:
        reply = session.post(f"{url}/v1/async-tasks", json=BODY, timeout=30)
        if reply.status_code == 200:
            submitted[n] = reply.json()["task_id"]
        return reply

    def submit_once(session: requests.Session, n: int) -> requests.Response:
        headers = {"Idempotency-Key": f"{run_key}-{n}"}
        return session.post(f"{url}/v1/async-tasks", json=BODY, headers=headers, timeout=30)

    def read(session: requests.Session, n: int) -> requests.Response:
        return session.get(f"{url}/v1/async-tasks/{submitted[n] or 'missing'}", timeout=30)

    run_phase(url, args.threads, WARMUP_REQUESTS, read)
    rows = []
    for label, call in (
        ("POST /v1/async-tasks", submit),
        ("POST with Idempotency-Key", submit_once),
        ("GET /v1/async-tasks/{id}", read),
    ):
        cpu_before = sum(process.cpu_times()[:2])
        row = run_phase(url, args.threads, args.requests, call)
        row["cpu"] = sum(process.cpu_times()[:2]) - cpu_before
        rows.append((label, row))
    return rows


if __name__ == "__main__":
    main()
