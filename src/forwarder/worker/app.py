"""The worker: one task, registered under both of model-engine's names, run by a Celery worker.

A task POSTs its payload to the model server and returns the shaped reply. A connection error
(the model server may be restarting) sends the task back through the broker with backoff, up to
``model_retries`` times; any other error fails that task alone, with model-engine's ``custom``
error payload stored next to Celery's ``exc_type`` / ``exc_message``.

A client may limit a task's time in the queue and its model call, and cancel it: the task then
ends EXPIRED, TIMEOUT or CANCELED without a model reply (see ``forwarder.worker.control``). A task
delivered more than ``max_deliveries`` times without finishing (it keeps killing its worker
process) ends FAILURE and is copied to the dead-letter queue (see ``forwarder.worker.crash_loop``).

Once a task has reached its final state and its result is stored, the post-inference hooks run in
the same slot: from ``after_return`` for SUCCESS and FAILURE, and from the task itself for the
states it ends with ``Ignore`` (for which Celery calls no ``after_return``); a retry is not final,
so it runs none. Each process closes its hooks (flushing what its sinks buffer) when it stops: a
prefork child when it exits or is recycled, a gevent worker at warm shutdown.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from typing import Any

from celery import Celery, Task, signals

from forwarder.celery_ext.brokers import broker_config, celery_app
from forwarder.config.masking import mask_url
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError, ForwarderError, ModelServerUnavailable, TaskStopped
from forwarder.hooks import HookRunner, TaskOutcome, build_hooks
from forwarder.observability.metrics import enable as enable_metrics
from forwarder.observability.metrics import recorder
from forwarder.observability.tracing import enable_spans, model_call_span, pop_trace_context
from forwarder.worker.control import TaskControl, TaskLimits
from forwarder.worker.crash_loop import CrashLoopGuard
from forwarder.worker.forwarding import Forwarder
from forwarder.worker.gevent_switch import check_gevent_patched

__all__ = ["LEGACY_TASK_NAME", "LIRA_TASK_NAME", "TASK_NAMES", "create_worker_app", "run_worker"]

LIRA_TASK_NAME = "ml_serve.celery_service.exec_func"
LEGACY_TASK_NAME = "hosted_model_inference.inference.async_inference.tasks.predict"
TASK_NAMES = (LIRA_TASK_NAME, LEGACY_TASK_NAME)

log = logging.getLogger(__name__)


def retry_delay(attempt: int, cap: float) -> float:
    """Exponential backoff from 1 s, capped, with jitter so restarted workers do not stampede."""
    return min(cap, 2.0**attempt) * random.uniform(0.5, 1.0)


def build_forwarder(settings: Settings) -> Forwarder:
    worker = settings.worker
    return Forwarder(
        settings.model,
        connect_timeout=worker.connect_timeout_seconds,
        read_timeout=worker.model_timeout_seconds,
        pool_size=max(worker.concurrency, 10),
    )


class HookedTask(Task):  # type: ignore[misc]  # Celery is untyped
    """Runs the post-inference hooks once the task's final state is stored."""

    hooks: HookRunner | None = None
    queue_name: str | None = None

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        if status in ("SUCCESS", "FAILURE"):
            self.run_hooks(status, retval, task_id, args, kwargs)

    def run_hooks(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: dict[str, Any]
    ) -> None:
        recorder().task_finished(self.queue_name or "", status.lower())
        if not self.hooks:
            return
        succeeded = status == "SUCCESS"
        self.hooks.run(
            TaskOutcome(
                task_id=task_id,
                queue=self.queue_name,
                request=args[0] if args else None,
                succeeded=succeeded,
                result=retval if succeeded else None,
                error=None if succeeded else f"{type(retval).__name__}: {retval}",
                status=status,
                trace_headers=pop_trace_context(dict(kwargs or {}), self.request),
            )
        )


def _hooks_of_stopped(task: HookedTask, error: TaskStopped) -> None:
    task.run_hooks(error.state, error, task.request.id, task.request.args, task.request.kwargs)


def queue_wait_seconds(arrival_timestamp: Any) -> float | None:
    """Seconds since model-engine's ``arrival_timestamp`` (a naive local time), if it parses.

    Celery's JSON decodes the datetime it encoded; another sender's may be an ISO string.
    """
    arrival = arrival_timestamp
    if isinstance(arrival, str):
        try:
            arrival = datetime.fromisoformat(arrival)
        except ValueError:
            return None
    if not isinstance(arrival, datetime):
        return None
    now = datetime.now(arrival.tzinfo) if arrival.tzinfo else datetime.now()
    return (now - arrival).total_seconds()


def create_worker_app(
    settings: Settings, forwarder: Forwarder, hooks: HookRunner | None = None
) -> Celery:
    """A Celery app with the forwarding task registered under both task names."""
    app = celery_app(settings)
    if settings.worker.sqs_url:
        from forwarder.celery_ext.sqs_visibility import KeepVisible

        app.steps["consumer"].add(KeepVisible)
    retries = settings.worker.model_retries
    backoff_cap = settings.worker.retry_backoff_max_seconds
    queue = settings.worker.queue
    crash_loop = CrashLoopGuard(
        settings.worker.max_deliveries, queue, settings.worker.dead_letter_queue_name
    )
    control = TaskControl(settings.worker.pool, lambda: app.backend, _hooks_of_stopped, crash_loop)
    visibility = settings.worker.visibility_timeout

    def forward(
        task: Task, payload: Any, arrival_timestamp: Any = None, *extra_args: Any, **extra: Any
    ) -> Any:
        if extra_args:
            log.warning(
                "task %s: ignoring %d extra positional argument(s)",
                task.request.id,
                len(extra_args),
            )
        metrics = recorder()
        wait = queue_wait_seconds(arrival_timestamp)
        metrics.task_received(queue, wait, wait is not None and wait > visibility)
        trace_headers = pop_trace_context(extra, task.request)
        limits = TaskLimits.pop_from(extra)
        if extra:
            log.warning("task %s: ignoring keyword argument(s) %s", task.request.id, sorted(extra))
        control.admit(task, limits)
        metrics.in_flight(queue, 1)
        started = time.perf_counter()
        try:
            with (
                control.interruptible(task, limits),
                model_call_span(task.request.id, trace_headers) as headers,
            ):
                return forwarder(payload, headers)
        except ModelServerUnavailable as exc:
            attempt = task.request.retries
            if attempt >= retries:
                raise ModelServerUnavailable(
                    f"{exc}; gave up after {attempt + 1} attempt(s)"
                ) from None
            delay = retry_delay(attempt, backoff_cap)
            log.warning(
                "task %s: model server unavailable, retry %d of %d in %.1f s",
                task.request.id,
                attempt + 1,
                retries,
                delay,
            )
            metrics.task_finished(queue, "retry")
            raise task.retry(exc=exc, countdown=delay) from None
        finally:
            metrics.model_call(queue, time.perf_counter() - started)
            metrics.in_flight(queue, -1)

    for name in TASK_NAMES:
        app.task(
            forward,
            name=name,
            base=HookedTask,
            hooks=hooks,
            queue_name=settings.worker.queue,
            bind=True,
            # STARTED is stored by the task after its cancel check, never over a CANCELED.
            track_started=False,
            acks_late=True,
            reject_on_worker_lost=True,
            max_retries=None,
            # Expected failures: stored as FAILURE, logged without a worker-level traceback.
            throws=(ForwarderError,),
        )
    return app


def _close_hooks_on_exit(hooks: HookRunner, pool: str) -> None:
    def close(**_: Any) -> None:
        hooks.close()

    # Under prefork the hooks run (and buffer) in the children; the parent never ran one.
    exit_signal = signals.worker_shutdown if pool == "gevent" else signals.worker_process_shutdown
    exit_signal.connect(close, weak=False)


def run_worker(settings: Settings) -> int:
    """Wait for the model server, then consume until a shutdown signal. Returns the exit code."""
    worker = settings.worker
    if worker.pool == "gevent":
        check_gevent_patched()
    config = broker_config(worker)
    log.info(
        "forwarder worker: pool=%s concurrency=%d queue=%s broker=%s results=%s model=%s",
        worker.pool,
        worker.concurrency,
        worker.queue,
        mask_url(config.broker_url)
        if config.kind != "embedded"
        else f"embedded ({worker.data_dir})",
        mask_url(config.result_backend),
        settings.model.predict_url,
    )
    if worker.tracing == "otel" and not enable_spans():
        raise ConfigError(
            "tracing", "otel", "OpenTelemetry installed: pip install opentelemetry-sdk"
        )
    if worker.metrics_port is not None:
        # Before the pool forks, and before anything imports prometheus_client.
        enable_metrics(
            worker.metrics_port, worker.metrics_host, multiprocess=worker.pool == "prefork"
        )
    forwarder = build_forwarder(settings)
    hooks = build_hooks(settings)
    forwarder.wait_until_ready(worker.readiness_timeout_seconds)
    app = create_worker_app(settings, forwarder, hooks)
    if hooks:
        _close_hooks_on_exit(hooks, worker.pool)
    options: dict[str, Any] = {
        "pool": worker.pool,
        "concurrency": worker.concurrency,
        "queues": [worker.queue],
        "loglevel": worker.log_level,
        "optimization": "fair",
        # Worker-to-worker chatter buys nothing here and costs broker traffic on every replica.
        "without_gossip": True,
        "without_mingle": True,
    }
    if worker.pool == "gevent" and worker.max_tasks_per_child:
        log.warning(
            "max_tasks_per_child=%d has no effect on the gevent pool", worker.max_tasks_per_child
        )
    if worker.pool == "prefork":
        from forwarder.celery_ext.prefork import PreforkPool

        options["pool"] = PreforkPool
        if worker.max_tasks_per_child:
            options["max_tasks_per_child"] = worker.max_tasks_per_child
    celery_worker = app.Worker(**options)
    celery_worker.start()
    return int(celery_worker.exitcode or 0)
