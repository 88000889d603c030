"""The worker: one task, registered under both of model-engine's names, run by a Celery worker.

The task's body is the lifecycle's pipeline (``forwarder.worker.lifecycle``): it POSTs the payload
to the model server and returns the shaped reply, and each final state ends in the lifecycle's
``finish``, which runs the post-inference hooks. Each process closes its hooks (flushing what its
sinks buffer) when it stops: a prefork child when it exits or is recycled, a gevent worker at
warm shutdown.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, signals

from forwarder.celery_ext.brokers import broker_config, celery_app
from forwarder.config.masking import mask_url
from forwarder.config.settings import Settings, WorkerSettings
from forwarder.errors import ConfigError, ForwarderError
from forwarder.events import event_log_for
from forwarder.hooks import HookRunner, build_hooks
from forwarder.observability.metrics import enable as enable_metrics
from forwarder.observability.tracing import enable_spans
from forwarder.protocol import FAILURE, SUCCESS, TASK_NAMES
from forwarder.worker.cancel_watch import CancelWatch
from forwarder.worker.crash_loop import CrashLoopGuard
from forwarder.worker.forwarding import Forwarder
from forwarder.worker.gevent_polls import native_readiness_polls
from forwarder.worker.gevent_switch import check_gevent_patched
from forwarder.worker.interrupts import interrupter_for
from forwarder.worker.lifecycle import Outcome, TaskLifecycle
from forwarder.worker.retry import RetryPolicy
from forwarder.worker.task_events import TaskEvents

__all__ = ["LifecycleTask", "build_forwarder", "build_lifecycle", "create_worker_app", "run_worker"]

log = logging.getLogger(__name__)


def build_forwarder(settings: Settings) -> Forwarder:
    worker = settings.worker
    return Forwarder(
        settings.model,
        connect_timeout=worker.connect_timeout_seconds,
        read_timeout=worker.model_timeout_seconds,
        pool_size=max(worker.concurrency, 10),
        max_response_bytes=worker.max_response_bytes,
    )


class LifecycleTask(Task):  # type: ignore[misc]  # Celery is untyped
    """The forwarding task: a SUCCESS or FAILURE Celery has stored ends in the lifecycle too."""

    lifecycle: TaskLifecycle | None = None

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        if status in (SUCCESS, FAILURE) and self.lifecycle is not None:
            self.lifecycle.finish(self, Outcome(status, retval))


def build_lifecycle(
    settings: Settings, app: Celery, forwarder: Forwarder, hooks: HookRunner | None
) -> TaskLifecycle:
    """The pipeline the settings describe, its cancel watch reading ``app``'s result backend."""
    worker = settings.worker
    return TaskLifecycle(
        queue=worker.queue,
        visibility_timeout=worker.visibility_timeout,
        model_call=forwarder,
        crash_loop=CrashLoopGuard(
            worker.max_deliveries, worker.queue, worker.dead_letter_queue_name
        ),
        cancel_watch=CancelWatch(
            lambda: app.backend, functools.partial(interrupter_for, worker.pool)
        ),
        retry=RetryPolicy(worker.model_retries, worker.retry_backoff_max_seconds, worker.queue),
        hooks=hooks,
        events=TaskEvents(lambda backend: event_log_for(backend, worker.events_max_length)),
    )


def create_worker_app(
    settings: Settings, forwarder: Forwarder, hooks: HookRunner | None = None
) -> Celery:
    """A Celery app with the forwarding task registered under both task names."""
    app = celery_app(settings)
    if settings.worker.sqs_url:
        from forwarder.celery_ext.sqs_visibility import KeepVisible

        app.steps["consumer"].add(KeepVisible)
    lifecycle = build_lifecycle(settings, app, forwarder, hooks)

    def forward(
        task: Task, payload: Any, arrival_timestamp: Any = None, *extra_args: Any, **extra: Any
    ) -> Any:
        return lifecycle.run(task, payload, arrival_timestamp, extra_args, extra)

    for name in TASK_NAMES:
        app.task(
            forward,
            name=name,
            base=LifecycleTask,
            lifecycle=lifecycle,
            bind=True,
            # STARTED is stored at admission, after the cancel check, never over a CANCELED.
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


def _start_deliverer(settings: Settings, argv: Sequence[str]) -> None:
    """The deliverer beside the worker, when callbacks are queued and it has slots."""
    callback = settings.hooks.callback
    if "callback" not in settings.hooks.names or callback.delivery != "queued":
        return
    if not callback.delivery_slots:
        log.info("callback.delivery_slots is 0: run forwarder deliver to deliver callbacks")
        return
    from forwarder.hooks.deliveries.deliverer import start_deliverer_child

    child = start_deliverer_child(argv)

    def stop(**_: Any) -> None:
        # Its warm shutdown: attempts in flight finish, jobs waiting for a retry go back.
        child.terminate()
        try:
            child.wait(timeout=max(30.0, 2 * callback.timeout_seconds))
        except Exception:
            child.kill()

    signals.worker_shutdown.connect(stop, weak=False)


def _announce(settings: Settings) -> None:
    """The start-up line; a WARNING too when the embedded broker is the one consumed."""
    worker = settings.worker
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
    if config.kind == "embedded":
        log.warning(
            "embedded broker: tasks are read from and results written to the folder %s only; "
            "no broker server is consumed (--broker-url, --broker-type or --sqs-url name one)",
            worker.data_dir.expanduser().resolve(),
        )


def _worker_options(worker: WorkerSettings) -> dict[str, Any]:
    """Celery's worker options for these settings."""
    options: dict[str, Any] = {
        "pool": worker.pool,
        "concurrency": worker.concurrency,
        "queues": [worker.queue],
        "loglevel": worker.log_level,
        "optimization": "fair",
        # Worker-to-worker chatter buys nothing here and costs broker traffic on every replica.
        "without_gossip": True,
        "without_mingle": True,
        "task_events": worker.events,
    }
    if worker.hostname:
        from celery.utils.nodenames import default_nodename, host_format

        # As Celery's -n does: %h, %n and %d expanded; a name without @ is a host, celery@NAME.
        options["hostname"] = host_format(default_nodename(worker.hostname))
    if worker.pool == "gevent" and worker.max_tasks_per_child:
        log.warning(
            "max_tasks_per_child=%d has no effect on the gevent pool", worker.max_tasks_per_child
        )
    if worker.pool == "prefork":
        from forwarder.celery_ext.prefork import PreforkPool

        options["pool"] = PreforkPool
        if worker.max_tasks_per_child:
            options["max_tasks_per_child"] = worker.max_tasks_per_child
    return options


def run_worker(settings: Settings, deliverer_argv: Sequence[str] = ()) -> int:
    """Wait for the model server, then consume until a shutdown signal. Returns the exit code.

    ``deliverer_argv``: the settings arguments of the deliverer the worker starts beside itself.
    """
    worker = settings.worker
    if worker.pool == "gevent":
        check_gevent_patched()
        native_readiness_polls()
    _announce(settings)
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
    _start_deliverer(settings, deliverer_argv)
    celery_worker = app.Worker(**_worker_options(worker))
    celery_worker.start()
    return int(celery_worker.exitcode or 0)
