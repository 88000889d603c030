"""FirehoseSink against moto over HTTP: STS AssumeRole, Firehose PutRecordBatch, S3 delivery.

moto writes each PutRecordBatch call's records into one S3 object at once, so what the bucket
holds is exactly what the sink sent. moto checks no credentials (an expired token still works),
so credential refreshes are counted on the sink's client cache, not observed as failures.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from forwarder.config.hooks import LoggingSettings
from forwarder.devtools.localrun import HOST, free_port
from forwarder.hooks.aws import assume_role_firehose_client
from forwarder.hooks.sinks.firehose import FirehoseSink
from support.aws import MotoServer

pytestmark = pytest.mark.integration

BUCKET = "logged-records"
STREAM = "inference-records"
ROLE_ARN = "arn:aws:iam::123456789012:role/forwarder-logging"


@pytest.fixture
def moto_env(moto_here: MotoServer) -> MotoServer:
    """This process's AWS clients pointed at moto; the bucket and the delivery stream made."""
    moto = moto_here
    moto.firehose_to_s3(STREAM, BUCKET)
    return moto


def settings(**overrides: Any) -> LoggingSettings:
    values: dict[str, Any] = {
        "sink": "firehose",
        "stream_name": STREAM,
        "role_arn": ROLE_ARN,
        "flush_interval_seconds": 60.0,
    }
    return LoggingSettings(**{**values, **overrides})


def log_record(i: int) -> dict[str, Any]:
    return {
        "EMITTED_AT": "2026-07-01T12:00:00.000000",
        "REQUEST_BODY": {"args": {"prompt": f"request {i}"}},
        "RESPONSE_BODY": {"result": {"n": i}, "status_code": 200, "task_id": f"task-{i}"},
        "ENDPOINT_ID": "end-1",
        "ENDPOINT_NAME": "echo",
        "ENDPOINT_TYPE": "async",
        "BUNDLE_ID": "bun-1",
        "LABELS": {"team": "infra"},
    }


def task_ids(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["RESPONSE_BODY"]["task_id"] for r in records)


def test_every_record_arrives_once_in_few_calls(moto_env: MotoServer) -> None:
    count = 1000
    sink = FirehoseSink(settings(), max_pool_connections=4)
    times = []
    for i in range(count):
        started = time.perf_counter()
        sink.put(log_record(i))
        times.append(time.perf_counter() - started)
    sink.close()

    records = moto_env.s3_json_lines(BUCKET)
    assert task_ids(records) == Counter(f"task-{i}" for i in range(count))
    assert sorted(records, key=lambda r: r["RESPONSE_BODY"]["result"]["n"]) == [
        log_record(i) for i in range(count)
    ]
    assert len(moto_env.s3_objects(BUCKET)) == sink.put_calls  # one object per call in moto
    assert sink.put_calls / count <= 0.01
    assert sink.client.builds == 1
    assert (sink.counts.sent, sink.counts.dropped) == (count, 0)
    # Only the two puts that filled a batch waited on the network.
    assert statistics.median(times) < 0.005
    print(
        f"\nFirehose calls per record: {sink.put_calls / count:.4f}; put(): median "
        f"{statistics.median(times) * 1e6:.0f} us, mean {statistics.mean(times) * 1e6:.0f} us, "
        f"max {max(times) * 1e3:.1f} ms"
    )


def test_short_credentials_are_assumed_once_per_lifetime(moto_env: MotoServer) -> None:
    lifetime, leeway = 2, 0.25
    sink = FirehoseSink(
        settings(
            session_duration_seconds=lifetime,
            refresh_leeway_seconds=leeway,
            flush_interval_seconds=0.05,
        )
    )
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 5.0:
        sink.put(log_record(sent))
        sent += 1
        time.sleep(0.005)
    sink.close()
    elapsed = time.monotonic() - started

    expected = elapsed / (lifetime - leeway)
    assert task_ids(moto_env.s3_json_lines(BUCKET)) == Counter(f"task-{i}" for i in range(sent))
    assert expected - 1 <= sink.client.builds <= expected + 1.5
    assert sink.client.failed_builds == 0
    assert sink.put_calls > 5 * sink.client.builds  # not rebuilt per call, let alone per record
    print(
        f"\nAssumeRole builds: {sink.client.builds} over {elapsed:.1f} s with {lifetime} s "
        f"credentials ({sent} records, {sink.put_calls} Firehose calls)"
    )


def test_a_failed_rebuild_keeps_serving_and_the_next_succeeds(
    moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(session_duration_seconds=2, refresh_leeway_seconds=1.5)
    built: list[Any] = []

    def build() -> tuple[Any, datetime | None]:
        if len(built) == 1:  # STS unreachable for the first rebuild
            built.append(None)
            with monkeypatch.context() as patch:
                patch.setenv("AWS_ENDPOINT_URL_STS", f"http://{HOST}:{free_port()}")
                return assume_role_firehose_client(config, 4)
        client, expiry = assume_role_firehose_client(config, 4)
        built.append(client)
        return client, expiry

    sink = FirehoseSink(config, build=build)

    def send(i: int) -> None:
        sink.put(log_record(i))
        sink.flush()

    send(0)
    time.sleep(0.6)  # now within the leeway of expiry

    send(1)
    assert (sink.client.builds, sink.client.failed_builds) == (1, 1)
    assert sink.counts.sent == 2

    send(2)
    sink.close()
    assert (sink.client.builds, sink.client.failed_builds) == (2, 1)
    assert built[2] is not None and built[2] is not built[0]
    assert task_ids(moto_env.s3_json_lines(BUCKET)) == Counter(f"task-{i}" for i in range(3))
    assert sink.counts.dropped == 0


def test_firehose_down_drops_and_counts_without_raising(
    moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:{free_port()}")
    count = 600  # a full batch sent from put(), the rest on close()
    sink = FirehoseSink(settings(role_arn=None), retry_backoff_seconds=0.05)

    started = time.monotonic()
    for i in range(count):
        sink.put(log_record(i))
    sink.close()
    elapsed = time.monotonic() - started

    assert (sink.counts.sent, sink.counts.dropped) == (0, count)
    assert sink.put_calls == 2 * 4  # two batches, each tried four times
    assert elapsed < 10
