"""The logging hook through a real worker into Firehose on moto, delivered to an S3 bucket.

Real Redis, the real echo model server and moto over HTTP. moto checks no credentials, so the
credential lifetime is proven by counting the client builds (one AssumeRole each) that every
worker process reports when it stops.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.devtools.localrun import HOST, free_port
from support.aws import MotoServer
from support.processes import Processes
from support.waiting import wait_all

pytestmark = [pytest.mark.integration]

STREAM = "inference-records"
BUCKET = "inference-records-bucket"
ROLE_ARN = "arn:aws:iam::123456789012:role/forwarder-logging"
ENDPOINT = {"id": "end_9", "name": "echo", "type": "async", "bundle_id": "bun_9", "labels": {}}


def sink_reports(log: str) -> list[dict[str, int]]:
    """One ``firehose sink: sent=... client_builds=...`` line per worker process."""
    return [
        {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", match)}
        for match in re.findall(r"firehose sink: (.*)", log)
    ]


def logging_config(path: Path, **logging: Any) -> list[str]:
    document = {
        "hooks": ["logging"],
        "endpoint": ENDPOINT,
        "logging": {"sink": "firehose", "stream_name": STREAM, "role_arn": ROLE_ARN, **logging},
    }
    path.write_text(yaml.safe_dump(document))
    return ["--config", str(path)]


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_every_task_has_its_record_in_the_bucket(
    pool: str, procs: Processes, redis_url: str, moto: MotoServer, tmp_path: Path
) -> None:
    moto.firehose_to_s3(STREAM, BUCKET)
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        concurrency=2,
        env=moto.env,
        extra_args=logging_config(tmp_path / "hooks.yaml"),
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    good = [client.submit({"args": {"n": n}}) for n in range(30)]
    bad = client.submit("not an object")
    results = wait_all(client, [*good, bad], timeout=30)
    assert [results[t].status for t in good] == ["SUCCESS"] * len(good)
    assert results[bad].status == "FAILURE"

    assert worker.stop() == 0  # warm shutdown flushes what the flusher has not sent yet
    records = {r["RESPONSE_BODY"]["task_id"]: r for r in moto.s3_json_lines(BUCKET)}
    assert set(records) == {*good, bad}
    assert len(moto.s3_json_lines(BUCKET)) == len(good) + 1  # each exactly once
    record = records[good[7]]
    assert json.loads(record["REQUEST_BODY"]) == {"args": {"n": 7}}
    assert record["RESPONSE_BODY"] == {
        "result": json.dumps({"n": 7}),
        "status_code": 200,
        "task_id": good[7],
    }
    assert (record["ENDPOINT_ID"], record["BUNDLE_ID"], record["ENDPOINT_TYPE"]) == (
        "end_9",
        "bun_9",
        "async",
    )
    assert records[bad]["RESPONSE_BODY"]["status"] == "FAILURE"
    reports = sink_reports(worker.log())
    assert sum(r["sent"] for r in reports) == len(good) + 1
    assert sum(r["dropped"] for r in reports) == 0
    # Batched: far fewer API calls than records (each process flushes about once a second).
    assert sum(r["put_calls"] for r in reports) <= len(reports) * 6


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_assume_role_once_per_credential_lifetime_per_process(
    pool: str, procs: Processes, redis_url: str, moto: MotoServer, tmp_path: Path
) -> None:
    moto.firehose_to_s3(STREAM, BUCKET)
    duration, leeway = 3, 1  # a client lives 2 s
    echo = procs.echo(delay=0.01)
    worker = procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        concurrency=2,
        env=moto.env,
        extra_args=logging_config(
            tmp_path / "hooks.yaml",
            session_duration_seconds=duration,
            refresh_leeway_seconds=leeway,
            flush_interval_seconds=0.2,
        ),
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    task_ids: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 5.0:
        batch = [client.submit({"args": {"n": len(task_ids) + i}}) for i in range(10)]
        wait_all(client, batch, timeout=30)
        task_ids += batch
    elapsed = time.monotonic() - started
    assert worker.stop() == 0

    reports = sink_reports(worker.log())
    assert reports, worker.log()
    assert sum(r["sent"] for r in reports) == len(task_ids)
    per_process_bound = math.ceil(elapsed / (duration - leeway)) + 1
    for report in reports:
        assert 1 <= report["client_builds"] <= per_process_bound, (report, elapsed)
    builds = sum(r["client_builds"] for r in reports)
    assert builds * 10 < len(task_ids), (builds, len(task_ids))
    assert len(moto.s3_json_lines(BUCKET)) == len(task_ids)


def test_firehose_down_changes_no_result_and_is_counted(
    procs: Processes, redis_url: str, moto: MotoServer, tmp_path: Path
) -> None:
    down = f"http://{HOST}:{free_port()}"
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool="gevent",
        broker_url=redis_url,
        concurrency=2,
        env={**moto.env, "AWS_ENDPOINT_URL": down},
        extra_args=logging_config(tmp_path / "hooks.yaml", flush_interval_seconds=0.2),
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    task_ids = [client.submit({"args": {"n": n}}) for n in range(10)]
    results = wait_all(client, task_ids, timeout=30)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    assert results[task_ids[4]].result == {"result": json.dumps({"n": 4}), "status_code": 200}

    assert worker.stop(timeout=30) == 0
    (report,) = sink_reports(worker.log())
    assert (report["sent"], report["dropped"]) == (0, len(task_ids))
    assert "dropping" in worker.log()
