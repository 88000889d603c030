"""Worker memory and throughput per pool, at the same concurrency, in one run.

Starts a throwaway redis-server and the echo model server, then for each pool a worker at
``--concurrency``; sends ``--tasks`` tasks, and reports tasks/s and the RSS / PSS of the worker's
whole process tree (parent and children) once they are done. gevent is reported as a ratio to
prefork measured in the same run.

    .venv/bin/python bench/worker_rss.py --concurrency 16 --tasks 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from forwarder.client import ForwarderClient
from forwarder.localrun import Child, start_echo_server, start_forwarder, start_redis
from forwarder.settings import load_settings

MIB = 1024 * 1024


def tree_memory(pid: int) -> tuple[float, float]:
    """RSS and PSS in MiB of a process and all its descendants."""
    root = psutil.Process(pid)
    rss = pss = 0
    for process in [root, *root.children(recursive=True)]:
        info = process.memory_full_info()
        rss += info.rss
        pss += info.pss
    return rss / MIB, pss / MIB


def measure(
    pool: str, concurrency: int, tasks: int, broker: str, model_port: int, folder: Path
) -> dict[str, float]:
    worker: Child = start_forwarder(
        [
            "worker",
            "--broker-url", broker,
            "--queue", f"bench-{pool}",
            "--pool", pool,
            "--concurrency", str(concurrency),
            "--set", "forwarder.async.user_hostname=127.0.0.1",
            "--set", f"forwarder.async.user_port={model_port}",
        ],
        folder / f"worker-{pool}.log",
    )  # fmt: skip
    settings = load_settings(flags={"--broker-url": broker, "--queue": f"bench-{pool}"})
    try:
        worker.wait_for(r"ready\.")
        with ForwarderClient(settings) as client:
            client.wait(client.submit({"args": {"warm": True}}), timeout=60)
            started = time.monotonic()
            ids = [client.submit({"args": {"i": index}}) for index in range(tasks)]
            statuses = [client.wait(task_id, timeout=300).status for task_id in ids]
            elapsed = time.monotonic() - started
        rss, pss = tree_memory(worker.pid)
    finally:
        worker.stop()
    return {
        "tasks_per_s": tasks / elapsed,
        "rss": rss,
        "pss": pss,
        "failed": float(sum(status != "SUCCESS" for status in statuses)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--model-delay", type=float, default=0.0, help="seconds per model call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as name:
        folder = Path(name)
        redis, redis_port = start_redis(folder)
        echo, model_port = start_echo_server(folder / "echo.log", "--delay", str(args.model_delay))
        try:
            broker = f"redis://127.0.0.1:{redis_port}/0"
            rows = {
                pool: measure(pool, args.concurrency, args.tasks, broker, model_port, folder)
                for pool in ("prefork", "gevent")
            }
        finally:
            echo.stop()
            redis.stop()
    model = f"{args.model_delay * 1000:g} ms" if args.model_delay else "instant"
    print(f"concurrency {args.concurrency}, {args.tasks} tasks, {model} echo model, Redis broker")
    if args.model_delay:
        print(f"ideal: concurrency / latency = {args.concurrency / args.model_delay:.0f} tasks/s")
    print()
    print("| pool | tasks/s | tree RSS MiB | tree PSS MiB | failed |")
    print("|---|---|---|---|---|")
    for pool, row in rows.items():
        print(
            f"| {pool} | {row['tasks_per_s']:.0f} | {row['rss']:.0f} | {row['pss']:.0f} "
            f"| {row['failed']:.0f} |"
        )
    prefork, gevent = rows["prefork"], rows["gevent"]
    print(
        f"\ngevent / prefork: RSS {gevent['rss'] / prefork['rss']:.2f}, "
        f"PSS {gevent['pss'] / prefork['pss']:.2f}, "
        f"tasks/s {gevent['tasks_per_s'] / prefork['tasks_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
