"""Prometheus metrics: what the worker records, and the endpoint that serves them.

Code records through ``recorder()``, which does nothing until ``enable`` is called (metrics are
off by default), so the task path pays for metrics only when they are on.

Under prefork every child writes its own files (prometheus-client's multiprocess mode) and the
parent serves their sum. Counters and histograms of children that have exited (recycled after
``max_tasks_per_child``, or killed) are folded into one archive file and their own files
removed, so no count is lost and the folder holds a file per live process, not one per child
ever started: a worker that runs for days does not slow its scrapes down.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Recorder", "enable", "recorder"]

log = logging.getLogger(__name__)

# Seconds; a model call and a queue wait both range from milliseconds to an hour.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# The archive of exited processes' counts: pid 0 is never a live worker process.
ARCHIVE_PID = "0"


class Recorder:
    """The metrics interface; this base records nothing."""

    def task_received(self, queue: str, wait_seconds: float | None, stuck: bool) -> None:
        pass

    def task_finished(self, queue: str, status: str) -> None:
        pass

    def redelivery_skipped(self, queue: str, status: str) -> None:
        pass

    def model_call(self, queue: str, seconds: float) -> None:
        pass

    def in_flight(self, queue: str, delta: int) -> None:
        pass

    def hook_finished(self, hook: str, ok: bool, seconds: float) -> None:
        pass

    def sink_records(self, sink: str, outcome: str, count: int) -> None:
        pass

    def aws_client_built(self, client: str, ok: bool) -> None:
        pass

    def callback_delivery(self, queue: str, outcome: str, lag_seconds: float | None) -> None:
        pass

    def callbacks_pending(self, queue: str, delta: int) -> None:
        pass


_recorder = Recorder()


def recorder() -> Recorder:
    return _recorder


class PrometheusRecorder(Recorder):
    def __init__(self) -> None:
        self._task_metrics()
        self._hook_metrics()
        self._callback_metrics()

    def _task_metrics(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.received = Counter(
            "forwarder_tasks_received", "Tasks a worker process started on.", ["queue"]
        )
        self.finished = Counter(
            "forwarder_tasks_finished",
            "Tasks by how their run ended: success, failure, retry, expired, timeout, canceled.",
            ["queue", "status"],
        )
        self.skipped = Counter(
            "forwarder_redeliveries_skipped",
            "Redeliveries of a task already completed, acknowledged without running it again.",
            ["queue", "status"],
        )
        self.stuck = Counter(
            "forwarder_tasks_stuck",
            "Tasks that had waited longer than the visibility timeout when they started.",
            ["queue"],
        )
        self.queue_wait = Histogram(
            "forwarder_queue_wait_seconds",
            "From the task's arrival_timestamp to its start.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
        )
        self.model_seconds = Histogram(
            "forwarder_model_call_seconds",
            "Duration of each call to the model server.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
        )
        self.running = Gauge(
            "forwarder_tasks_in_flight",
            "Tasks running now.",
            ["queue"],
            multiprocess_mode="livesum",
        )

    def _hook_metrics(self) -> None:
        from prometheus_client import Counter, Histogram

        self.hook_attempts = Counter("forwarder_hook_attempts", "Hook runs.", ["hook"])
        self.hook_successes = Counter(
            "forwarder_hook_successes", "Hook runs that succeeded.", ["hook"]
        )
        self.hook_failures = Counter("forwarder_hook_failures", "Hook runs that failed.", ["hook"])
        self.hook_seconds = Histogram(
            "forwarder_hook_seconds", "Time in each hook run.", ["hook"], buckets=LATENCY_BUCKETS
        )
        self.sink = Counter(
            "forwarder_sink_records",
            "Log records by what became of them: sent, retried, dropped.",
            ["sink", "outcome"],
        )
        self.aws_builds = Counter(
            "forwarder_aws_client_builds",
            "AWS clients built (each with credentials, e.g. one AssumeRole).",
            ["client"],
        )
        self.aws_build_failures = Counter(
            "forwarder_aws_client_build_failures", "AWS client builds that failed.", ["client"]
        )

    def _callback_metrics(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.deliveries = Counter(
            "forwarder_callback_deliveries",
            "Callback delivery attempts by outcome: delivered, failed (final), retried.",
            ["queue", "outcome"],
        )
        self.delivery_lag = Histogram(
            "forwarder_callback_delivery_lag_seconds",
            "From the result stored to its callback delivered (or failed for good).",
            ["queue", "outcome"],
            buckets=(*LATENCY_BUCKETS, 14400, 86400),
        )
        self.pending = Gauge(
            "forwarder_callbacks_pending",
            "Callbacks waiting for a retry in the deliverers.",
            ["queue"],
            multiprocess_mode="livesum",
        )

    def task_received(self, queue: str, wait_seconds: float | None, stuck: bool) -> None:
        self.received.labels(queue).inc()
        if wait_seconds is not None:
            self.queue_wait.labels(queue).observe(max(wait_seconds, 0.0))
        if stuck:
            self.stuck.labels(queue).inc()

    def task_finished(self, queue: str, status: str) -> None:
        self.finished.labels(queue, status).inc()

    def redelivery_skipped(self, queue: str, status: str) -> None:
        self.skipped.labels(queue, status).inc()

    def model_call(self, queue: str, seconds: float) -> None:
        self.model_seconds.labels(queue).observe(seconds)

    def in_flight(self, queue: str, delta: int) -> None:
        self.running.labels(queue).inc(delta)

    def hook_finished(self, hook: str, ok: bool, seconds: float) -> None:
        self.hook_attempts.labels(hook).inc()
        (self.hook_successes if ok else self.hook_failures).labels(hook).inc()
        self.hook_seconds.labels(hook).observe(seconds)

    def sink_records(self, sink: str, outcome: str, count: int) -> None:
        if count:
            self.sink.labels(sink, outcome).inc(count)

    def aws_client_built(self, client: str, ok: bool) -> None:
        (self.aws_builds if ok else self.aws_build_failures).labels(client).inc()

    def callback_delivery(self, queue: str, outcome: str, lag_seconds: float | None) -> None:
        self.deliveries.labels(queue, outcome).inc()
        if lag_seconds is not None:
            self.delivery_lag.labels(queue, outcome).observe(max(lag_seconds, 0.0))

    def callbacks_pending(self, queue: str, delta: int) -> None:
        self.pending.labels(queue).inc(delta)


def _pid_of(path: str) -> str:
    return os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExitedProcessFolder:
    """Folds the files of exited processes into the archive, under the scrape's lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def fold(self) -> None:
        from prometheus_client import multiprocess
        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        dead = {
            pid
            for path in glob.glob(os.path.join(self.path, "*.db"))
            if (pid := _pid_of(path)) != ARCHIVE_PID and not _alive(pid)
        }
        for pid in dead:
            multiprocess.mark_process_dead(int(pid), self.path)
            for kind in ("counter", "histogram"):
                archive = os.path.join(self.path, f"{kind}_{ARCHIVE_PID}.db")
                exited = os.path.join(self.path, f"{kind}_{pid}.db")
                if not os.path.exists(exited):
                    continue
                sources = [p for p in (archive, exited) if os.path.exists(p)]
                merged = multiprocess.MultiProcessCollector.merge(sources, accumulate=False)
                folded = os.path.join(self.path, f"{kind}_{ARCHIVE_PID}.db.new")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(folded)
                out = MmapedDict(folded)
                try:
                    for metric in merged:
                        for sample in metric.samples:
                            labels = dict(sample.labels)
                            key = mmap_key(
                                metric.name,
                                sample.name,
                                list(labels),
                                list(labels.values()),
                                metric.documentation,
                            )
                            out.write_value(key, sample.value, 0.0)
                finally:
                    out.close()
                # The .new name does not end in .db, so a scrape never reads it half-written.
                os.replace(folded, archive)
                os.remove(exited)
            # Gauges of other modes (not used here) would stay; remove what is left of the pid.
            for path in glob.glob(os.path.join(self.path, f"*_{pid}.db")):
                os.remove(path)


def _tree_rss_bytes(root: int) -> float:
    """Resident memory of ``root`` and its children (a prefork worker and its pool)."""
    page = os.sysconf("SC_PAGE_SIZE")
    pids = [str(root)]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{root}/task"):
            with open(f"/proc/{root}/task/{task}/children") as children:
                pids += children.read().split()
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as statm:
            total += int(statm.read().split()[1]) * page
    return float(total)


def _memory_collector(root: int) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    class TreeMemory:
        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily(
                "forwarder_worker_resident_memory_bytes",
                "Resident memory of the worker process and its pool processes.",
                value=_tree_rss_bytes(root),
            )

    return TreeMemory()


def enable(port: int, host: str, *, multiprocess: bool) -> Recorder:
    """Record metrics from now on, and serve them on ``host:port``.

    With ``multiprocess`` (prefork) this must run before prometheus_client is first imported and
    before the pool forks: the library picks its storage when it is imported.
    """
    global _recorder
    folder: str | None = None
    if multiprocess:
        folder = tempfile.mkdtemp(prefix="forwarder-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as mp

    _recorder = PrometheusRecorder()
    registry = REGISTRY
    if folder is not None:
        registry = CollectorRegistry()
        exited = ExitedProcessFolder(folder)
        collector = mp.MultiProcessCollector(None, path=folder)

        class Folded:
            def collect(self) -> Iterator[Any]:
                with exited.lock:
                    exited.fold()
                    yield from collector.collect()

        registry.register(Folded())
        import atexit

        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    registry.register(_memory_collector(os.getpid()))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return _recorder
