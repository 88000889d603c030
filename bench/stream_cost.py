"""What recording a model's stream costs a worker: CPU per chunk and memory, against the same
worker answering the same text unstreamed, in one run.

One gevent worker (concurrency = streams) on Redis, the echo model server. The baseline: every
task's model replies the text of ``chunks`` tokens as one JSON body. Streamed: every task's model
streams the same tokens as OpenAI chat chunks over SSE (``token_delay`` apart, so the streams
overlap), each chunk parsed, appended to the task's Redis stream and assembled into the result.
Reports the worker's CPU per task and per chunk (streamed minus baseline, over the chunks), and
its peak resident memory while the tasks run, each with the ratio to the baseline.

    .venv/bin/python bench/stream_cost.py                # 64 streams of 2,000 chunks
    .venv/bin/python bench/stream_cost.py --short        # 8 streams of 200 chunks (smoke test)
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import tree_cpu_seconds, tree_memory

from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import load_settings
from forwarder.devtools.localrun import HOST, Child, start_echo_server, start_forwarder, start_redis

READY = r"celery@\S+ ready\."
QUEUE = "stream-bench"


class PeakMemory:
    """Samples a process tree's RSS every 20 ms while in the ``with`` block; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_memory(self.pid)[0])
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_batch(
    client: ForwarderClient, worker: Child, payloads: list[dict[str, Any]]
) -> dict[str, Any]:
    cpu = tree_cpu_seconds(worker.pid)
    started = time.monotonic()
    with PeakMemory(worker.pid) as memory:
        ids = [client.submit(payload) for payload in payloads]
        results = [client.wait(task_id, timeout=600) for task_id in ids]
    return {
        "cpu_s": tree_cpu_seconds(worker.pid) - cpu,
        "elapsed_s": time.monotonic() - started,
        "peak_rss_mib": memory.peak,
        "failed": sum(result.status != "SUCCESS" for result in results),
        "results": results,
    }


def run(folder: Path, streams: int, chunks: int, token_delay: float) -> dict[str, Any]:
    redis, port = start_redis(folder)
    echo, echo_port = start_echo_server(folder / "echo.log")
    broker = f"redis://{HOST}:{port}/0"
    worker = start_forwarder(
        [
            "worker", "--pool", "gevent", "--concurrency", str(streams), "--queue", QUEUE,
            "--broker-url", broker,
            "--set", f"forwarder.async.user_hostname={HOST}",
            "--set", f"forwarder.async.user_port={echo_port}",
        ],
        folder / "worker.log",
    )  # fmt: skip
    try:
        worker.wait_for(READY, 60)
        settings = load_settings(env={}, flags={"--broker-url": broker, "--queue": QUEUE})
        with ForwarderClient(settings) as client:
            text = "".join(f"token{n} " for n in range(chunks))
            # Warm: the pool's connections and the first stream's code paths.
            run_batch(client, worker, [{"args": {"stream": 5}}, {"args": {"text": "x"}}])
            plain = run_batch(client, worker, [{"args": {"text": text}}] * streams)
            streamed_payload = {"args": {"stream": chunks, "token_delay": token_delay}}
            streamed = run_batch(client, worker, [streamed_payload] * streams)
            assembled = json.loads(streamed["results"][0].result["result"])
            same_text = assembled["choices"][0]["message"]["content"] == text
            events = sum(1 for _ in client.events(streamed["results"][0].task_id, timeout=30))
    finally:
        worker.stop(signal.SIGTERM, timeout=30)
        echo.stop()
        redis.stop()
    plain_task = plain["cpu_s"] / streams
    streamed_task = streamed["cpu_s"] / streams
    return {
        "streams": streams,
        "chunks": chunks,
        "token_delay": token_delay,
        "plain_cpu_ms_per_task": 1000 * plain_task,
        "streamed_cpu_ms_per_task": 1000 * streamed_task,
        "cpu_us_per_chunk": 1e6 * (streamed_task - plain_task) / chunks,
        "cpu_ratio": streamed_task / max(plain_task, 1e-9),
        "plain_peak_rss_mib": plain["peak_rss_mib"],
        "streamed_peak_rss_mib": streamed["peak_rss_mib"],
        "rss_ratio": streamed["peak_rss_mib"] / max(plain["peak_rss_mib"], 1e-9),
        "streamed_elapsed_s": streamed["elapsed_s"],
        "events_in_one_log": events,
        "result_is_the_stream": same_text,
        "failed": plain["failed"] + streamed["failed"],
    }


def table(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{result['streams']} concurrent tasks (gevent), {result['chunks']} chunks each, "
            f"{result['token_delay'] * 1000:g} ms between tokens; Redis results and event logs",
            "",
            "| reply | worker CPU ms/task | CPU µs/chunk | CPU ratio | peak RSS MiB | RSS ratio "
            "| failed |",
            "|---|---|---|---|---|---|---|",
            f"| one JSON body (baseline) | {result['plain_cpu_ms_per_task']:.2f} | | 1.00 "
            f"| {result['plain_peak_rss_mib']:.1f} | 1.00 | |",
            f"| SSE stream, recorded | {result['streamed_cpu_ms_per_task']:.2f} "
            f"| {result['cpu_us_per_chunk']:.1f} | {result['cpu_ratio']:.2f} "
            f"| {result['streamed_peak_rss_mib']:.1f} | {result['rss_ratio']:.2f} "
            f"| {result['failed']} |",
            "",
            f"events in one task's log: {result['events_in_one_log']} "
            f"(chunks + final state); result equals the stream: {result['result_is_the_stream']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--token-delay", type=float, default=0.002)
    parser.add_argument("--short", action="store_true", help="8 streams of 200 chunks")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.short:
        args.streams, args.chunks = 8, 200
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as folder:
        result = run(Path(folder), args.streams, args.chunks, args.token_delay)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
