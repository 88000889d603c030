"""Where tasks and results live: the embedded default, Redis, or SQS; and the Celery app over them.

The embedded default needs no server: kombu's filesystem transport and Celery's file result
backend under one data folder. It is at-most-once: a message is taken off the queue when a worker
reads it, so a task in flight when its worker dies is lost. Redis and SQS keep an unacknowledged
message and deliver it again after the visibility timeout (at-least-once).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from forwarder.celery_ext.backends import BACKEND_CLASSES
from forwarder.config import model_engine
from forwarder.config.settings import Settings, WorkerSettings
from forwarder.errors import ConfigError

__all__ = ["BrokerConfig", "broker_config", "celery_app"]

# An idle embedded worker answers within 20 ms, and polling the empty folder costs about 1% of
# a core.
EMBEDDED_POLLING_INTERVAL = 0.02
# kombu waits this long after an empty poll, and also whenever every slot is busy: at its default
# of 1 s a busy prefork worker sat idle between tasks (2 tasks/s instead of 20 with c=2 on moto).
# An empty queue is long-polled for 10 s (kombu's wait_time_seconds) so an idle worker still makes
# one request per 10 s.
SQS_POLLING_INTERVAL = 0.02
REDIS_MIN_CONNECTIONS = 10
# The embedded broker's folders: messages, control broadcasts and results, the owner's only.
DATA_FOLDER_MODE = 0o700
# Celery sleeps 10 ms doubling up to 10 s (full jitter) between result-store tries: 20 tries
# ride out a Redis restart of a minute or so, then the error is raised as before.
RESULT_BACKEND_MAX_RETRIES = 20
SQS_QUEUE_NAME = re.compile(r"(?=.{1,80}\Z)[A-Za-z0-9_-]+(?:\.fifo)?")


@dataclass(frozen=True)
class BrokerConfig:
    kind: str  # "embedded", "redis" or "sqs"
    broker_url: str
    result_backend: str
    transport_options: dict[str, Any] = field(default_factory=dict)


def broker_config(worker: WorkerSettings, *, region: str | None = None) -> BrokerConfig:
    """The broker and result backend the settings select; ``region``: ``aws.region``."""
    worker = model_engine.resolve(worker)
    if worker.sqs_url and worker.broker_url:
        raise ConfigError("--sqs-url", worker.sqs_url, "either --sqs-url or --broker-url, not both")
    if worker.sqs_url:
        return _sqs(worker, worker.sqs_url, region)
    if worker.broker_url:
        return BrokerConfig(
            kind="redis",
            broker_url=worker.broker_url,
            result_backend=worker.result_backend or worker.broker_url,
            transport_options={
                "visibility_timeout": worker.visibility_timeout,
                # kombu's default pool of 10 refuses a connection to the eleventh greenlet
                # acking at once ("Couldn't ack ... MaxConnectionsError") under gevent.
                "max_connections": max(REDIS_MIN_CONNECTIONS, worker.concurrency + 4),
            },
        )
    return _embedded(worker)


def _embedded(worker: WorkerSettings) -> BrokerConfig:
    root = worker.data_dir.expanduser().resolve()
    folders = {name: root / name for name in ("queue", "control", "results")}
    for folder in (root, *folders.values()):
        try:
            # The folder given may be one of the operator's own: only ours are tightened.
            _private_folder(folder, tighten=folder != root)
        except OSError as exc:
            raise ConfigError(
                "data_dir (--data-dir, FORWARDER_DATA_DIR, worker.data_dir)",
                str(root),
                f"a writable folder ({exc.strerror})",
            ) from None
    return BrokerConfig(
        kind="embedded",
        broker_url="filesystem://localhost/",
        result_backend=worker.result_backend or f"file://{folders['results']}",
        transport_options={
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "control_folder": str(folders["control"]),
            "polling_interval": EMBEDDED_POLLING_INTERVAL,
        },
    )


def _private_folder(folder: Path, *, tighten: bool) -> None:
    """Make ``folder`` 0700, or with ``tighten`` make an existing one of this user's 0700: its
    messages and results carry callback credentials and model replies."""
    folder.mkdir(mode=DATA_FOLDER_MODE, parents=True, exist_ok=True)
    if not tighten:
        return
    status = folder.stat()
    if status.st_uid == os.getuid() and stat.S_IMODE(status.st_mode) != DATA_FOLDER_MODE:
        folder.chmod(DATA_FOLDER_MODE)


def _sqs(worker: WorkerSettings, url: str, region: str | None) -> BrokerConfig:
    if worker.events:
        # kombu's SQS transport has no fanout exchange, which Celery's events are sent to.
        raise ConfigError(
            "--events", True, "false with an SQS broker: SQS carries no Celery events"
        )
    if not worker.result_backend:
        raise ConfigError(
            "--result-backend", None, "a result backend URL; an SQS broker keeps no results"
        )
    # kombu looks a queue up in predefined_queues by its SQS form of the name (dots become
    # dashes, other punctuation underscores), so any other name would fail only once consumed.
    if not SQS_QUEUE_NAME.fullmatch(worker.queue):
        raise ConfigError(
            "--queue",
            worker.queue,
            "an SQS queue name: up to 80 letters, digits, - and _ (a FIFO queue's ends in .fifo)",
        )
    if worker.queue.endswith(".fifo") != url.endswith(".fifo"):
        raise ConfigError(
            "--queue", worker.queue, "a name ending in .fifo exactly when the SQS queue is FIFO"
        )
    queue_options: dict[str, Any] = {
        "url": url,
        # kombu ignores the global visibility_timeout for predefined queues.
        "visibility_timeout": worker.visibility_timeout,
    }
    # Only the work queue is consumed; the dead-letter queue is listed so that kombu, which
    # refuses a queue not in predefined_queues, can send to it. Same account and region.
    dead_letter_url = f"{url.rstrip('/').rpartition('/')[0]}/{worker.dead_letter_queue_name}"
    options: dict[str, Any] = {
        "predefined_queues": {
            worker.queue: queue_options,
            worker.dead_letter_queue_name: {"url": dead_letter_url},
        },
        "polling_interval": SQS_POLLING_INTERVAL,
    }
    if region:
        options["region"] = region
    return BrokerConfig(
        kind="sqs",
        broker_url="sqs://",
        result_backend=worker.result_backend,
        transport_options=options,
    )


def celery_app(settings: Settings, name: str = "forwarder") -> Celery:
    """A Celery app speaking the wire protocol: JSON only, late acks, one prefetch per slot."""
    config = broker_config(settings.worker, region=settings.aws.region)
    app = Celery(
        name, broker=config.broker_url, backend=config.result_backend, set_as_current=False
    )
    app.loader.override_backends = dict(BACKEND_CLASSES)
    if config.kind == "redis" and config.broker_url.startswith("redis://"):
        # Not for rediss://: kombu turns TLS on from the URL's scheme name only.
        app.conf.broker_transport = "forwarder.celery_ext.redis_transport:Transport"
    elif config.kind == "embedded":
        app.conf.broker_transport = "forwarder.celery_ext.filesystem_transport:Transport"
    elif config.kind == "sqs":
        app.conf.broker_transport = "forwarder.celery_ext.sqs_transport:Transport"
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        # Flower and `celery events` see workers and tasks from these events alone; off, they
        # cost the broker nothing (a publish per task state, and a heartbeat every 2 s, when on).
        worker_send_task_events=settings.worker.events,
        task_send_sent_event=settings.worker.events,
        worker_prefetch_multiplier=1,
        # Also sizes the S3 result backend's connection pool, which every greenlet shares.
        worker_concurrency=settings.worker.concurrency,
        s3_region=settings.aws.region,  # the S3 result backend's
        task_default_queue=settings.worker.queue,
        broker_transport_options=config.transport_options,
        broker_connection_retry_on_startup=True,
        # A result store that meets a restarting Redis is retried, not turned into a FAILURE of
        # a task whose model call succeeded (found by tests/faults): Celery retries only the
        # errors its backend calls safe (connection errors), with backoff, here for ~1 minute.
        result_backend_always_retry=True,
        result_backend_max_retries=RESULT_BACKEND_MAX_RETRIES,
        # Otherwise Celery builds a backend (and a Redis connection pool) per thread, which under
        # gevent means one per greenlet; the backends used here are safe to share in a process.
        result_backend_thread_safe=True,
        # forwarder.observability.logs has configured the root logger (JSON lines, task ids, masking).
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
