"""What the post-inference hooks cost a worker, against the same worker without hooks, in one run.

Starts a throwaway redis-server, moto (STS + Firehose delivering to S3), the echo model server and
a callback receiver, then for each pool a worker without hooks and one with the callback and the
Firehose logging hook (assumed role with short credentials). Reports tasks/s with and without
hooks, time per task in each hook, Firehose API calls per record, and AssumeRole calls per worker
process against the number of credential lifetimes the run lasted.

    .venv/bin/python bench/hook_cost.py --tasks 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import yaml

from forwarder.client import ForwarderClient
from forwarder.localrun import (
    HOST,
    aws_environment,
    start_echo_server,
    start_forwarder,
    start_moto,
    start_redis,
)
from forwarder.settings import load_settings

STREAM = "bench-records"
BUCKET = "bench-records-bucket"


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
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


def hooks_config(path: Path, callback_url: str, credential_seconds: int, leeway: float) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "hooks": ["callback", "logging"],
                "endpoint": {"id": "end_1", "name": "bench", "type": "async", "bundle_id": "b"},
                "callback": {"default_url": callback_url},
                "logging": {
                    "sink": "firehose",
                    "stream_name": STREAM,
                    "role_arn": "arn:aws:iam::123456789012:role/forwarder-logging",
                    "session_duration_seconds": credential_seconds,
                    "refresh_leeway_seconds": leeway,
                },
            }
        )
    )
    return path


def run_worker(
    pool: str,
    args: argparse.Namespace,
    broker: str,
    model_port: int,
    folder: Path,
    extra: list[str],
) -> dict[str, Any]:
    queue = f"bench-{pool}-{'hooks' if extra else 'plain'}"
    log_path = folder / f"worker-{queue}.log"
    worker = start_forwarder(
        [
            "worker",
            "--broker-url", broker,
            "--queue", queue,
            "--pool", pool,
            "--concurrency", str(args.concurrency),
            "--set", f"forwarder.async.user_hostname={HOST}",
            "--set", f"forwarder.async.user_port={model_port}",
            *extra,
        ],
        log_path,
        env=aws_environment(args.moto_endpoint),
    )  # fmt: skip
    settings = load_settings(env={}, flags={"--broker-url": broker, "--queue": queue})
    try:
        worker.wait_for(r"ready\.")
        with ForwarderClient(settings) as client:
            client.wait(client.submit({"args": {"warm": True}}), timeout=60)
            started = time.monotonic()
            ids = [client.submit({"args": {"i": index}}) for index in range(args.tasks)]
            failed = sum(client.wait(task_id, timeout=300).status != "SUCCESS" for task_id in ids)
            elapsed = time.monotonic() - started
    finally:
        worker.stop(timeout=60)
    log = worker.log()
    return {"tasks_per_s": args.tasks / elapsed, "elapsed": elapsed, "failed": failed, "log": log}


def hook_seconds(log: str, hook: str) -> tuple[int, float]:
    attempts, seconds = 0, 0.0
    for match in re.finditer(rf"{hook} attempts=(\d+) .*? seconds=([\d.]+)", log):
        attempts += int(match.group(1))
        seconds += float(match.group(2))
    return attempts, seconds


def sink_reports(log: str) -> list[dict[str, int]]:
    return [
        {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", line)}
        for line in re.findall(r"firehose sink: (.*)", log)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--credential-seconds", type=int, default=8)
    parser.add_argument("--leeway", type=float, default=3.0)
    parser.add_argument("--pools", default="prefork,gevent")
    args = parser.parse_args()
    lifetime = args.credential_seconds - args.leeway
    receiver = ThreadingHTTPServer((HOST, 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    callback_url = f"http://{HOST}:{receiver.server_address[1]}/callback"
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as name:
        folder = Path(name)
        redis, redis_port = start_redis(folder)
        moto, args.moto_endpoint = start_moto(folder / "moto.log")
        echo, model_port = start_echo_server(folder / "echo.log")
        make_stream(args.moto_endpoint)
        config = hooks_config(
            folder / "hooks.yaml", callback_url, args.credential_seconds, args.leeway
        )
        broker = f"redis://{HOST}:{redis_port}/0"
        rows = []
        try:
            for pool in args.pools.split(","):
                plain = run_worker(pool, args, broker, model_port, folder, [])
                hooked = run_worker(
                    pool, args, broker, model_port, folder, ["--config", str(config)]
                )
                rows.append((pool, plain, hooked))
            records = delivered_records(args.moto_endpoint)
        finally:
            for child in (echo, moto, redis):
                child.stop()
            receiver.shutdown()

    print(f"{args.tasks} tasks per worker, concurrency {args.concurrency}, instant model")
    print(f"credentials of {args.credential_seconds} s rebuilt {args.leeway:g} s before expiry")
    print()
    print(
        "| pool | no hooks tasks/s | hooks tasks/s | ratio | callback ms/task | logging ms/task "
        "| Firehose calls/record | AssumeRole per process | lifetimes in run | failed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    total_sent = 0
    for pool, plain, hooked in rows:
        callback_n, callback_s = hook_seconds(hooked["log"], "callback")
        logging_n, logging_s = hook_seconds(hooked["log"], "logging")
        reports = sink_reports(hooked["log"])
        sent = sum(r["sent"] for r in reports)
        total_sent += sent
        calls = sum(r["put_calls"] for r in reports)
        builds = "/".join(str(r["client_builds"]) for r in reports)
        print(
            f"| {pool} | {plain['tasks_per_s']:.0f} | {hooked['tasks_per_s']:.0f} "
            f"| {hooked['tasks_per_s'] / plain['tasks_per_s']:.2f} "
            f"| {1000 * callback_s / max(callback_n, 1):.2f} "
            f"| {1000 * logging_s / max(logging_n, 1):.3f} "
            f"| {calls / max(sent, 1):.4f} | {builds} "
            f"| {math.ceil(hooked['elapsed'] / lifetime)} "
            f"| {plain['failed'] + hooked['failed']} |"
        )
    print()
    print(f"records in the bucket: {records} of {total_sent} sent")


if __name__ == "__main__":
    main()
