"""FirehoseSink's batching, limits and retries, against a small in-memory PutRecordBatch."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from forwarder.config.hooks import LoggingSettings
from forwarder.hooks.sinks import firehose
from forwarder.hooks.sinks.firehose import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_RECORD_BYTES,
    FirehoseSink,
    encode,
)

STREAM = "records"
# An error code for the records ``FakeFirehose.fail`` picks, or None to accept them.
Failure = Callable[[int, bytes], str | None]


class FakeFirehose:
    """Records each PutRecordBatch call; ``fail(call_number, data)`` decides per record."""

    def __init__(self, fail: Failure | None = None, raise_calls: int = 0, delay: float = 0.0):
        self.fail = fail
        self.raise_calls = raise_calls
        self.delay = delay
        self.calls: list[list[bytes]] = []
        self.in_call = threading.Event()

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> Any:
        assert DeliveryStreamName == STREAM
        batch = [record["Data"] for record in Records]
        self.calls.append(batch)
        self.in_call.set()
        time.sleep(self.delay)
        if len(self.calls) <= self.raise_calls:
            raise ConnectionError("endpoint unreachable")
        results = []
        for data in batch:
            code = self.fail(len(self.calls), data) if self.fail else None
            results.append(
                {"ErrorCode": code, "ErrorMessage": "slow down"} if code else {"RecordId": "id"}
            )
        return {
            "FailedPutCount": sum("ErrorCode" in r for r in results),
            "RequestResponses": results,
        }

    def delivered(self) -> list[bytes]:
        return [data for batch in self.calls for data in batch]


@pytest.fixture
def make_sink() -> Iterator[Callable[..., tuple[FirehoseSink, FakeFirehose]]]:
    sinks: list[FirehoseSink] = []

    def make(fake: FakeFirehose | None = None, flush_interval: float = 3600.0) -> Any:
        fake = fake or FakeFirehose()
        builds: list[int] = []

        def build() -> tuple[FakeFirehose, datetime | None]:
            builds.append(1)
            return fake, None

        settings = LoggingSettings(
            sink="firehose", stream_name=STREAM, flush_interval_seconds=flush_interval
        )
        sink = FirehoseSink(settings, build=build, retry_backoff_seconds=0.0)
        sinks.append(sink)
        return sink, fake

    yield make
    for sink in sinks:
        sink.close()


def record(i: int, padding: int = 0) -> dict[str, Any]:
    return {"task_id": f"t{i}", "RESPONSE_BODY": "x" * padding}


def sized(i: int, size: int) -> dict[str, Any]:
    """A record that encodes to exactly ``size`` bytes."""
    return record(i, size - len(encode(record(i))))


def test_records_are_model_engine_json_one_per_line(make_sink: Any) -> None:
    sink, fake = make_sink()
    rec = {"EMITTED_AT": "2024-01-01T00:00:00", "RESPONSE_BODY": {"task_id": "t"}, "LABELS": {}}

    sink.put(rec)
    sink.close()

    assert fake.delivered() == [json.dumps(rec).encode() + b"\n"]


def wait_for_calls(fake: FakeFirehose, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.calls) < count:
        assert time.monotonic() < deadline, f"{len(fake.calls)} of {count} calls after {timeout} s"
        time.sleep(0.005)


def test_a_full_batch_of_500_goes_out_as_soon_as_it_is_full(make_sink: Any) -> None:
    sink, fake = make_sink()

    for i in range(MAX_BATCH_RECORDS - 1):
        sink.put(record(i))
    time.sleep(0.05)
    assert fake.calls == []

    sink.put(record(MAX_BATCH_RECORDS - 1))
    wait_for_calls(fake, 1)
    assert [len(batch) for batch in fake.calls] == [MAX_BATCH_RECORDS]

    sink.put(record(MAX_BATCH_RECORDS))
    sink.close()
    assert [len(batch) for batch in fake.calls] == [MAX_BATCH_RECORDS, 1]
    assert fake.delivered() == [encode(record(i)) for i in range(MAX_BATCH_RECORDS + 1)]
    assert (sink.counts.sent, sink.put_calls) == (MAX_BATCH_RECORDS + 1, 2)


def test_puts_do_not_wait_for_a_slow_firehose_until_the_backlog_bound(make_sink: Any) -> None:
    sink, fake = make_sink(FakeFirehose(delay=0.5))
    bound = firehose.MAX_BACKLOG_BATCHES * MAX_BATCH_RECORDS

    started = time.monotonic()
    for i in range(bound - 1):
        sink.put(record(i))
    assert time.monotonic() - started < 0.4  # the flusher's first call alone takes 0.5 s
    wait_for_calls(fake, 1)

    # At the bound the task that reaches it sends a batch itself: memory stays bounded.
    for i in range(bound - 1, bound + MAX_BATCH_RECORDS):
        sink.put(record(i))
    assert len(sink._buffer) <= bound
    sink.close()
    assert sorted(fake.delivered()) == sorted(encode(record(i)) for i in range(bound + 500))


def test_a_batch_never_exceeds_4_mib(make_sink: Any) -> None:
    sink, fake = make_sink()
    size = MAX_BATCH_BYTES // 8  # eight fill a batch exactly

    for i in range(7):
        sink.put(sized(i, size))
    time.sleep(0.05)
    assert fake.calls == []
    sink.put(sized(7, size))
    wait_for_calls(fake, 1)
    assert [sum(map(len, batch)) for batch in fake.calls] == [MAX_BATCH_BYTES]

    # Eight a byte larger overfill a batch: seven go, the eighth waits for the next one.
    for i in range(8, 16):
        sink.put(sized(i, size + 1))
    wait_for_calls(fake, 2)
    time.sleep(0.05)
    assert [len(batch) for batch in fake.calls] == [8, 7]
    sink.close()

    assert [len(batch) for batch in fake.calls] == [8, 7, 1]
    assert all(sum(map(len, batch)) <= MAX_BATCH_BYTES for batch in fake.calls)
    expected = [sized(i, size) for i in range(8)] + [sized(i, size + 1) for i in range(8, 16)]
    assert fake.delivered() == [encode(rec) for rec in expected]
    assert sink.counts.sent == 16


def test_a_record_over_1000_kib_is_dropped_never_truncated(make_sink: Any) -> None:
    sink, fake = make_sink()

    sink.put(sized(0, MAX_RECORD_BYTES + 1))
    sink.put(sized(1, MAX_RECORD_BYTES))
    sink.close()

    assert fake.delivered() == [encode(sized(1, MAX_RECORD_BYTES))]
    assert (sink.counts.sent, sink.counts.dropped) == (1, 1)


def test_a_record_that_is_not_json_is_dropped(make_sink: Any) -> None:
    sink, fake = make_sink()

    sink.put({"when": datetime(2024, 1, 1)})
    sink.close()

    assert fake.calls == []
    assert sink.counts.dropped == 1


def test_only_the_records_firehose_rejects_are_sent_again(make_sink: Any) -> None:
    rejected = {encode(record(i)) for i in range(0, 10, 3)}
    sink, fake = make_sink(
        FakeFirehose(
            fail=lambda call, data: (
                "ServiceUnavailableException" if call == 1 and data in rejected else None
            )
        )
    )

    for i in range(10):
        sink.put(record(i))
    sink.close()

    assert [len(batch) for batch in fake.calls] == [10, len(rejected)]
    assert set(fake.calls[1]) == rejected
    assert sorted(fake.delivered()) == sorted(
        [encode(record(i)) for i in range(10)] + list(rejected)
    )
    assert (sink.counts.sent, sink.counts.retried, sink.counts.dropped) == (10, len(rejected), 0)


def test_a_record_rejected_every_time_is_dropped_after_bounded_retries(
    make_sink: Any, caplog: pytest.LogCaptureFixture
) -> None:
    poison = encode(record(1))
    sink, fake = make_sink(
        FakeFirehose(fail=lambda call, data: "InternalFailure" if data == poison else None)
    )

    for i in range(3):
        sink.put(record(i))
    sink.close()

    attempts = 1 + firehose.RETRIES
    assert [len(batch) for batch in fake.calls] == [3] + [1] * firehose.RETRIES
    assert (sink.counts.sent, sink.counts.retried, sink.counts.dropped) == (2, firehose.RETRIES, 1)
    assert sink.put_calls == attempts
    assert "dropping 1 log record(s)" in caplog.text and "InternalFailure" in caplog.text


def test_whole_call_errors_are_retried_then_dropped_without_raising(make_sink: Any) -> None:
    sink, fake = make_sink(FakeFirehose(raise_calls=1000))

    for i in range(5):
        sink.put(record(i))
    sink.close()  # must not raise

    assert len(fake.calls) == sink.put_calls == 1 + firehose.RETRIES
    assert (sink.counts.sent, sink.counts.dropped) == (0, 5)
    assert sink.counts.retried == 5 * firehose.RETRIES


def test_a_whole_call_error_then_success_sends_everything_once(make_sink: Any) -> None:
    sink, fake = make_sink(FakeFirehose(raise_calls=1))

    for i in range(5):
        sink.put(record(i))
    sink.close()

    assert (sink.counts.sent, sink.counts.retried, sink.counts.dropped) == (5, 5, 0)
    assert fake.calls[1] == [encode(record(i)) for i in range(5)]


def test_the_flusher_sends_without_a_flush_call(make_sink: Any) -> None:
    sink, fake = make_sink(flush_interval=0.05)

    for i in range(3):
        sink.put(record(i))

    deadline = time.monotonic() + 5
    while sink.counts.sent < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.delivered() == [encode(record(i)) for i in range(3)]


def test_put_does_not_wait_for_a_batch_in_flight(make_sink: Any) -> None:
    sink, fake = make_sink(FakeFirehose(delay=0.5), flush_interval=0.01)
    sink.put(record(0))
    assert fake.in_call.wait(5), "the flusher never sent"

    started = time.perf_counter()
    sink.put(record(1))
    elapsed = time.perf_counter() - started

    assert elapsed < 0.2
    sink.close()
    assert fake.delivered() == [encode(record(0)), encode(record(1))]


def test_the_client_is_built_once_for_many_batches(make_sink: Any) -> None:
    sink, fake = make_sink()

    for i in range(5 * MAX_BATCH_RECORDS):
        sink.put(record(i))
    sink.close()

    assert len(fake.calls) == 5
    assert sink.client.builds == 1


def test_a_new_process_starts_with_an_empty_buffer(
    make_sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, fake = make_sink()
    sink.put(record(0))  # the parent's, still buffered at the fork

    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)
    sink.put(record(1))
    sink.close()

    assert fake.delivered() == [encode(record(1))]
    assert sink.counts.sent == 1


def test_a_flush_sends_only_what_was_buffered_when_it_began(make_sink: Any) -> None:
    # Under steady load a flush that also took the records put meanwhile would never end, and
    # would send one small batch per call instead of one a second.
    sink, fake = make_sink(FakeFirehose(delay=0.2))
    for i in range(10):
        sink.put(record(i))
    flushing = threading.Thread(target=sink.flush)
    flushing.start()
    assert fake.in_call.wait(5)
    for i in range(10, 15):
        sink.put(record(i))
    flushing.join(5)
    assert [len(batch) for batch in fake.calls] == [10]
    sink.flush()
    assert [len(batch) for batch in fake.calls] == [10, 5]
