"""Inference throughput with callbacks to a slow receiver, against the same worker without them.

One redis-server, the echo model server (``--model-delay`` per call) and a receiver in this
process that takes ``--receiver-delay`` seconds per call. For each round the same worker runs
``--tasks`` tasks without callbacks, then with queued callbacks (the default: delivered by the
deliverer beside the worker, on its own slots); ``--inline-tasks`` adds the callback made in the
slot, for contrast. Reports inference tasks/s of each and the ratio of queued to none, and how
many callbacks had arrived when the last result was stored.

    .venv/bin/python bench/callback_delivery.py --tasks 400 --rounds 3 --inline-tasks 40
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import load_settings
from forwarder.devtools.localrun import HOST, start_echo_server, start_forwarder, start_redis


class SlowReceiver(BaseHTTPRequestHandler):
    delay = 2.0
    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        with SlowReceiver.lock:
            SlowReceiver.calls += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the worker and of the deliverer beside it (each with its children)."""
    root = psutil.Process(pid)
    totals = {"worker": sum(root.cpu_times()[:2]), "deliverer": 0.0}
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            name = "deliverer" if "deliver" in child.cmdline() else "worker"
            totals[name] += sum(child.cpu_times()[:2])
    return totals


def run(
    folder: Path, broker: str, model_port: int, mode: str, tasks: int, args: Any
) -> tuple[float, dict[str, float]]:
    """Inference tasks/s of one worker in ``mode`` (none, queued, inline), from first send, and
    the CPU ms per task of the worker and of its deliverer."""
    queue = f"bench-{mode}-{time.monotonic_ns()}"
    config: dict[str, Any] = {}
    if mode != "none":
        config = {
            "hooks": ["callback"],
            "callback": {
                "default_url": args.callback_url,
                "delivery": "inline" if mode == "inline" else "queued",
                "timeout_seconds": args.receiver_delay + 5,
                "delivery_slots": args.delivery_slots,
            },
        }
    path = folder / f"{queue}.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = start_forwarder(
        [
            "worker", "--broker-url", broker, "--queue", queue, "--pool", args.pool,
            "--concurrency", str(args.concurrency), "--config", str(path),
            "--set", f"forwarder.async.user_hostname={HOST}",
            "--set", f"forwarder.async.user_port={model_port}",
        ],
        folder / f"{queue}.log",
    )  # fmt: skip
    try:
        worker.wait_for(r"celery@\S+ ready\.", 60)
        if mode == "queued":
            # The deliverer beside it starts at the same time: its start-up is not inference.
            worker.wait_for(r"deliverer-\d+@\S+ ready\.", 60)
        settings = load_settings(env={}, flags={"--broker-url": broker, "--queue": queue})
        with ForwarderClient(settings) as client, redis.Redis.from_url(broker) as conn:
            before = tree_cpu(worker.pid)
            started = time.monotonic()
            ids = [client.submit({"args": {"i": i}}) for i in range(tasks)]
            keys = [f"celery-task-meta-{task_id}" for task_id in ids]
            while sum(raw is not None and b"SUCCESS" in raw for raw in conn.mget(keys)) < tasks:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            after = tree_cpu(worker.pid)
            cpu = {name: 1000 * (after[name] - before[name]) / tasks for name in after}
            return tasks / elapsed, cpu
    finally:
        worker.stop(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inline-tasks", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pool", default="gevent")
    parser.add_argument("--model-delay", type=float, default=0.05)
    parser.add_argument("--receiver-delay", type=float, default=2.0)
    parser.add_argument("--delivery-slots", type=int, default=4)
    args = parser.parse_args()
    SlowReceiver.delay = args.receiver_delay
    receiver = ThreadingHTTPServer((HOST, 0), SlowReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    args.callback_url = f"http://{HOST}:{receiver.server_address[1]}/callback"
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as name:
        folder = Path(name)
        redis_child, redis_port = start_redis(folder)
        echo, model_port = start_echo_server(folder / "echo.log", "--delay", str(args.model_delay))
        broker = f"redis://{HOST}:{redis_port}/0"
        try:
            runs: dict[str, list[tuple[float, dict[str, float]]]] = {"none": [], "queued": []}
            for _ in range(args.rounds):
                for mode in runs:
                    runs[mode].append(run(folder, broker, model_port, mode, args.tasks, args))
            if args.inline_tasks:
                runs["inline"] = [
                    run(folder, broker, model_port, "inline", args.inline_tasks, args)
                ]
        finally:
            echo.stop()
            redis_child.stop()
            receiver.shutdown()
    print(
        f"receiver {args.receiver_delay:g} s per call, model {args.model_delay:g} s, "
        f"{args.pool} c={args.concurrency}, {args.tasks} tasks x {args.rounds} rounds (median)"
    )
    print("| callbacks | tasks/s | ratio to none | worker CPU ms/task | deliverer CPU ms/task |")
    print("|---|---|---|---|---|")
    none = statistics.median(rate for rate, _ in runs["none"])
    for mode, results in runs.items():
        rate = statistics.median(r for r, _ in results)
        worker = statistics.median(c["worker"] for _, c in results)
        deliverer = statistics.median(c["deliverer"] for _, c in results)
        print(f"| {mode} | {rate:.1f} | {rate / none:.3f} | {worker:.2f} | {deliverer:.2f} |")
    print(f"callbacks received by the end: {SlowReceiver.calls}")


if __name__ == "__main__":
    main()
