"""The ``firehose`` sink: log records to an Amazon Data Firehose delivery stream, in batches.

The client is built once per process and rebuilt only shortly before its assumed-role
credentials expire (``forwarder.hooks.aws.RefreshingClient``), never per record. Records are
buffered and sent with ``PutRecordBatch`` by a background flusher, as soon as a batch is full and
at least every ``flush_interval_seconds``, and on ``flush``/``close``. A task only sends a batch
itself when ``MAX_BACKLOG_BATCHES`` are waiting (Firehose slower than the tasks): that bounds the
memory. Only the records Firehose reports as failed are sent again, a bounded number of times
with jittered backoff; what still fails is dropped, logged and counted, never raised into the
task. Delivery is at least once: a call that times out after Firehose accepted it is sent again.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from forwarder.backoff import backoff
from forwarder.config.hooks import LoggingSettings
from forwarder.errors import ConfigError
from forwarder.hooks.aws import RefreshingClient, assume_role_firehose_client, aws_region
from forwarder.hooks.sinks.base import Sink, SinkCounts
from forwarder.observability.metrics import recorder

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "MAX_RECORD_BYTES",
    "FirehoseSink",
]

log = logging.getLogger(__name__)

# Firehose's quotas: a record's data, and one PutRecordBatch call.
MAX_RECORD_BYTES = 1_000 * 1024
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
RETRIES = 3
MAX_BACKLOG_BATCHES = 4
RETRY_BACKOFF_SECONDS = 0.1


def encode(record: Mapping[str, Any]) -> bytes:
    """model-engine's bytes (``json.dumps(record)``) plus a newline.

    Firehose concatenates records into each S3 object; the newline makes the objects JSON lines.
    """
    return json.dumps(record).encode("utf-8") + b"\n"


class FirehoseSink(Sink):
    name = "firehose"

    def __init__(
        self,
        settings: LoggingSettings,
        *,
        max_pool_connections: int = 10,
        build: Callable[[], tuple[Any, datetime | None]] | None = None,
        retry_backoff_seconds: float = RETRY_BACKOFF_SECONDS,
    ) -> None:
        """``build`` makes the Firehose client; by default it assumes ``settings.role_arn``."""
        super().__init__()
        if not settings.stream_name:
            raise ConfigError(
                "logging.stream_name", None, "the Firehose delivery stream's name (sink: firehose)"
            )
        self.stream_name = settings.stream_name
        self.flush_interval = settings.flush_interval_seconds
        self.retry_backoff = retry_backoff_seconds
        if build is None:
            aws_region(settings)  # a missing boto3 or region stops start-up, not the first flush
            build = functools.partial(assume_role_firehose_client, settings, max_pool_connections)
        self.client = RefreshingClient(
            build, leeway=timedelta(seconds=settings.refresh_leeway_seconds), name="firehose"
        )
        self._start_process()

    def _start_process(self) -> None:
        self._pid = os.getpid()
        self.counts = SinkCounts()
        self.put_calls = 0
        self._lock = threading.Lock()
        # One batch in flight at a time, so that ``flush`` returns only once what was
        # buffered before it has been sent (or dropped).
        self._send_lock = threading.Lock()
        self._buffer: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    def _check_process(self) -> None:
        # After fork the buffer is the parent's to send and its flusher thread is not here;
        # only the forking thread exists, so nothing else is using the sink yet.
        if self._pid != os.getpid():
            self._start_process()

    def _count(self, *, sent: int = 0, retried: int = 0, dropped: int = 0, calls: int = 0) -> None:
        with self._lock:
            self.counts.sent += sent
            self.counts.retried += retried
            self.counts.dropped += dropped
            self.put_calls += calls
        metrics = recorder()
        metrics.sink_records(self.name, "sent", sent)
        metrics.sink_records(self.name, "retried", retried)
        metrics.sink_records(self.name, "dropped", dropped)

    def put(self, record: Mapping[str, Any]) -> None:
        """Buffer ``record``; the caller sends only when the backlog is at its bound."""
        self._check_process()
        try:
            data = encode(record)
        except (TypeError, ValueError) as exc:
            log.warning("dropping a log record that is not JSON: %s", exc)
            self._count(dropped=1)
            return
        if len(data) > MAX_RECORD_BYTES:
            # Truncated JSON would be worse than none: it breaks whoever reads the objects.
            log.warning(
                "dropping a log record of %d bytes: Firehose takes at most %d",
                len(data),
                MAX_RECORD_BYTES,
            )
            self._count(dropped=1)
            return
        with self._lock:
            self._buffer.append(data)
            self._buffered_bytes += len(data)
            full = self._full()
            backlogged = len(self._buffer) >= MAX_BACKLOG_BATCHES * MAX_BATCH_RECORDS
            flusher = None
            if self._flusher is None:
                self._stop = threading.Event()
                self._wake = threading.Event()
                flusher = self._flusher = threading.Thread(
                    target=self._run_flusher,
                    args=(self._stop, self._wake),
                    name="firehose-flusher",
                    daemon=True,
                )
        if flusher is not None:
            flusher.start()
        if backlogged:
            self._send_buffered(full_only=True)
        elif full:
            self._wake.set()

    def flush(self) -> None:
        self._check_process()
        self._send_buffered(full_only=False)

    def close(self) -> None:
        """Stop the flusher and send what is buffered, on the caller."""
        self._check_process()
        with self._lock:
            flusher, self._flusher = self._flusher, None
            self._stop.set()
            self._wake.set()
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()
        self.flush()
        log.info(
            "firehose sink: sent=%d retried=%d dropped=%d put_calls=%d client_builds=%d",
            self.counts.sent,
            self.counts.retried,
            self.counts.dropped,
            self.put_calls,
            self.client.builds,
        )

    def _run_flusher(self, stop: threading.Event, wake: threading.Event) -> None:
        while True:
            # Woken because a batch is full: send full batches; on the interval: everything.
            woken = wake.wait(self.flush_interval)
            wake.clear()
            if stop.is_set():
                return  # close() sends what is left, on its caller
            try:
                self._send_buffered(full_only=woken)
            except Exception:
                # Keep flushing: without this thread, a quiet worker would hold records forever.
                log.exception("flushing log records to Firehose failed")

    def _full(self) -> bool:
        return len(self._buffer) >= MAX_BATCH_RECORDS or self._buffered_bytes >= MAX_BATCH_BYTES

    def _take_batch(self, full_only: bool, limit: int = MAX_BATCH_RECORDS) -> list[bytes]:
        with self._lock:
            if full_only and not self._full():
                return []
            batch: list[bytes] = []
            size = 0
            while (
                self._buffer
                and len(batch) < min(limit, MAX_BATCH_RECORDS)
                and size + len(self._buffer[0]) <= MAX_BATCH_BYTES
            ):
                data = self._buffer.popleft()
                batch.append(data)
                size += len(data)
            self._buffered_bytes -= size
            return batch

    def _send_buffered(self, full_only: bool) -> None:
        with self._send_lock:
            if full_only:
                while batch := self._take_batch(full_only=True):
                    self._send(batch)
                return
            # Only what is buffered now: records put while a batch is in flight wait for a full
            # batch or the next interval, or a busy worker would send a small batch per call.
            with self._lock:
                remaining = len(self._buffer)
            while remaining and (batch := self._take_batch(full_only=False, limit=remaining)):
                remaining -= len(batch)
                self._send(batch)

    def _send(self, batch: list[bytes]) -> None:
        pending = batch
        error: object = None
        for attempt in range(1 + RETRIES):
            if attempt:
                self._count(retried=len(pending))
                # Bounded by RETRIES rather than by a cap.
                time.sleep(backoff(attempt - 1, self.retry_backoff, math.inf))
            try:
                client = self.client.get()
                self._count(calls=1)
                response = client.put_record_batch(
                    DeliveryStreamName=self.stream_name,
                    Records=[{"Data": data} for data in pending],
                )
                results = response["RequestResponses"]
                failed = [
                    (data, result)
                    for data, result in zip(pending, results, strict=True)
                    if result.get("ErrorCode")
                ]
            except Exception as exc:
                error = exc
                continue
            self._count(sent=len(pending) - len(failed))
            if not failed:
                return
            first = failed[0][1]
            error = f"{len(failed)} failed, e.g. {first['ErrorCode']}: {first.get('ErrorMessage')}"
            pending = [data for data, _ in failed]
        log.warning(
            "dropping %d log record(s) after %d attempts to send them to Firehose stream %s: %s",
            len(pending),
            1 + RETRIES,
            self.stream_name,
            error,
        )
        self._count(dropped=len(pending))
