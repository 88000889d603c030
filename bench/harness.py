"""What every benchmark stage shares: the services, the workers of either kind, and their costs.

A ``Stack`` starts once per run: a throwaway redis-server (broker and results), moto (STS and
Firehose delivering to an S3 bucket), two echo model servers (instant and 50 ms) and a keep-alive
callback receiver in this process. ``start_worker`` starts the forwarder's worker or the
plain-Celery baseline (``baseline_app.py``) against it; ``tree_memory`` and ``tree_cpu_seconds``
read the cost of a worker's whole process tree.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import psutil
import redis
import yaml

from forwarder.devtools.localrun import (
    HOST,
    Child,
    aws_environment,
    start_echo_server,
    start_forwarder,
    start_moto,
    start_redis,
)

MIB = 1024 * 1024
BENCH = Path(__file__).resolve().parent
STREAM = "bench-records"
BUCKET = "bench-records-bucket"
ROLE_ARN = "arn:aws:iam::123456789012:role/forwarder-logging"
MODEL_DELAY = 0.05
READY = r"celery@\S+ ready\."


def tree_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_memory(pid: int) -> tuple[float, float]:
    """RSS and PSS in MiB of a process and all its descendants."""
    rss = pss = 0
    for process in tree_processes(pid):
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += info.rss
        pss += info.pss
    return rss / MIB, pss / MIB


def cpu_seconds(process: psutil.Process, reaped: bool = False) -> float:
    """User and system CPU of one process (0 once it is gone); ``reaped``: with its exited
    children's, which are in their parent's ``children_*`` once reaped, never twice."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    total = times.user + times.system
    return total + times.children_user + times.children_system if reaped else total


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process tree, counting descendants that have already exited."""
    return sum(cpu_seconds(process, reaped=True) for process in tree_processes(pid))


class CallbackReceiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would
    lock = threading.Lock()
    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with CallbackReceiver.lock:
            CallbackReceiver.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def aws_client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def make_stream(endpoint: str) -> None:
    aws_client("s3", endpoint).create_bucket(Bucket=BUCKET)
    aws_client("firehose", endpoint).create_delivery_stream(
        DeliveryStreamName=STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
        },
    )


def delivered_records(endpoint: str) -> int:
    s3 = aws_client("s3", endpoint)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            count += len(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().splitlines())
    return count


class Stack:
    """The services every stage runs against, started once and stopped together.

    ``aws=False`` leaves moto out, for a stage whose workers make no AWS call.
    """

    def __init__(self, aws: bool = True) -> None:
        self.aws = aws
        # Nothing listens there: a stage without moto makes no AWS call.
        self.moto_endpoint = "http://127.0.0.1:9"

    def __enter__(self) -> Stack:
        self._folder = tempfile.TemporaryDirectory(prefix="forwarder-bench-")
        self.folder = Path(self._folder.name)
        self._children: list[Child] = []
        self._receiver = ThreadingHTTPServer((HOST, 0), CallbackReceiver)
        threading.Thread(target=self._receiver.serve_forever, daemon=True).start()
        try:
            redis_child, redis_port = start_redis(self.folder)
            self._children.append(redis_child)
            if self.aws:
                moto, self.moto_endpoint = start_moto(self.folder / "moto.log")
                self._children.append(moto)
            instant, self.model_port = start_echo_server(self.folder / "echo.log")
            self._children.append(instant)
            self.services = {"redis-server": redis_child, "instant model": instant}
            slow, self.slow_model_port = start_echo_server(
                self.folder / "echo-slow.log", "--delay", str(MODEL_DELAY)
            )
            self._children.append(slow)
            if self.aws:
                make_stream(self.moto_endpoint)
        except BaseException:
            self.close()
            raise
        self.callback_url = f"http://{HOST}:{self._receiver.server_address[1]}/callback"
        self.broker = f"redis://{HOST}:{redis_port}/0"
        self.redis = redis.Redis(host=HOST, port=redis_port)
        self.runs = 0
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._receiver.shutdown()
        self._receiver.server_close()
        for child in reversed(self._children):
            child.stop()
        self._folder.cleanup()

    @property
    def callbacks(self) -> int:
        with CallbackReceiver.lock:
            return CallbackReceiver.count

    def reset_aws(self) -> None:
        """An empty moto with a fresh stream, so a stage counts only its own records."""
        reset = urllib.request.Request(f"{self.moto_endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=30).close()
        make_stream(self.moto_endpoint)

    def new_queue(self, label: str) -> str:
        """A fresh queue on an emptied Redis, so one run's keys never weigh on the next."""
        self.redis.flushdb()
        self.runs += 1
        return f"bench-{self.runs}-{label}"


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: ``impl`` forwarder or baseline, and what it does after each model call.

    ``firehose``: ``off``; ``sink`` (ours: the logging hook's batching Firehose sink); ``cached``
    or ``per-task`` (the baseline: a client per process, or STS and a client on every task).
    """

    impl: str
    pool: str
    concurrency: int
    callback: bool = False
    firehose: str = "off"
    slow_model: bool = False
    credential_seconds: int = 900
    leeway: float = 60.0
    extra_args: tuple[str, ...] = ()  # more flags for our worker (``--events``)
    source: Path | None = None  # the ``src`` folder our worker imports from; None: this checkout

    @property
    def label(self) -> str:
        return f"{self.impl}-{self.pool}-c{self.concurrency}"


def hooks_config(stack: Stack, spec: WorkerSpec) -> Path:
    hooks = ["callback"] if spec.callback else []
    hooks += ["logging"] if spec.firehose != "off" else []
    path = stack.folder / f"hooks-{'-'.join(hooks)}-{spec.credential_seconds}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "hooks": hooks,
                "endpoint": {"id": "end_1", "name": "bench", "type": "async", "bundle_id": "b"},
                "callback": {"default_url": stack.callback_url},
                "logging": {
                    "sink": "firehose",
                    "stream_name": STREAM,
                    "role_arn": ROLE_ARN,
                    "session_duration_seconds": spec.credential_seconds,
                    "refresh_leeway_seconds": spec.leeway,
                },
            }
        )
    )
    return path


def start_worker(stack: Stack, spec: WorkerSpec, queue: str) -> Child:
    """The worker consuming ``queue``, once it says it is ready."""
    port = stack.slow_model_port if spec.slow_model else stack.model_port
    log_path = stack.folder / f"worker-{queue}.log"
    env = aws_environment(stack.moto_endpoint) if stack.aws else {}
    if spec.source is not None:
        env |= {"PYTHONPATH": str(spec.source)}  # ahead of this checkout's editable install
    if spec.impl == "forwarder":
        extra = []
        if spec.callback or spec.firehose != "off":
            extra = ["--config", str(hooks_config(stack, spec))]
        worker = start_forwarder(
            [
                "worker",
                "--broker-url", stack.broker,
                "--queue", queue,
                "--pool", spec.pool,
                "--concurrency", str(spec.concurrency),
                "--set", f"forwarder.async.user_hostname={HOST}",
                "--set", f"forwarder.async.user_port={port}",
                *extra,
                *spec.extra_args,
            ],
            log_path,
            env=env,
        )  # fmt: skip
    else:
        env |= {
            "BENCH_BROKER_URL": stack.broker,
            "BENCH_MODEL_URL": f"http://{HOST}:{port}/predict",
            "BENCH_FIREHOSE": spec.firehose,
            "BENCH_STREAM": STREAM,
            "BENCH_ROLE_ARN": ROLE_ARN,
            "BENCH_CALLBACK_URL": stack.callback_url if spec.callback else None,
        }
        celery = Path(sys.executable).with_name("celery")
        command = [str(celery), "-A", "baseline_app", "worker", "-P", spec.pool]
        command += ["-c", str(spec.concurrency), "-Q", queue, "--loglevel", "INFO"]
        worker = Child(command, log_path, env, cwd=BENCH)
    try:
        worker.wait_for(READY, timeout=180)
    except BaseException:
        worker.kill()
        raise
    return worker


def hook_seconds(log: str, hook: str) -> tuple[int, float]:
    """Attempts and seconds of one of our hooks, summed over the processes' closing lines."""
    attempts, seconds = 0, 0.0
    for match in re.finditer(rf"{hook} attempts=(\d+) .*? seconds=([\d.]+)", log):
        attempts += int(match.group(1))
        seconds += float(match.group(2))
    return attempts, seconds


def counters(log: str, prefix: str) -> list[dict[str, float]]:
    """The ``name=value`` pairs of each ``prefix: ...`` line: one per process that closed."""
    return [
        {name: float(value) for name, value in re.findall(r"(\w+)=([\d.]+)", line)}
        for line in re.findall(rf"{prefix}: (.*)", log)
    ]


def sink_reports(log: str) -> list[dict[str, float]]:
    """Our Firehose sink's counts per process: sent, put_calls, client_builds, ..."""
    return counters(log, "firehose sink")


def baseline_reports(log: str) -> list[dict[str, float]]:
    """The baseline's Firehose counts per process: puts, seconds, assume_role."""
    return [report for report in counters(log, "baseline firehose") if report.get("puts")]


def per_process(counts: list[int]) -> str:
    """Counts of the processes of one worker: ``2 in each of 8 processes``, or each listed."""
    if len(counts) > 1 and len(set(counts)) == 1:
        return f"{counts[0]} in each of {len(counts)} processes"
    return "/".join(str(count) for count in counts) or "none"
