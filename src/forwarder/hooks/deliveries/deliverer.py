"""The deliverer: a Celery worker of its own consuming ``<queue>-callbacks``, on its own slots.

It runs in a process of its own, ``forwarder deliver``, which ``forwarder worker`` starts beside
itself with ``callback.delivery_slots`` slots (threads: deliveries wait on the network only), or
which runs alone (``delivery_slots: 0`` on the workers; a container of its own). Its own process
means its own slots and its own visibility timeout: a receiver that is down, slow or hanging
fills the deliverer's slots and never one of the model's, and a job waiting for its countdown is
held by the deliverer's timer, not by any slot.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, signals

from forwarder.config.masking import mask_url
from forwarder.config.settings import Settings
from forwarder.hooks.deliveries.broker import CeleryJobQueues, delivery_app
from forwarder.hooks.deliveries.jobs import DeliveryJob, callbacks_queue
from forwarder.hooks.deliveries.runner import DeliveryRunner
from forwarder.hooks.deliveries.sender import Sender
from forwarder.hooks.deliveries.state import StateStore
from forwarder.protocol import DELIVER_TASK_NAME

__all__ = ["create_deliverer_app", "run_deliverer", "start_deliverer_child"]

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 4


def create_deliverer_app(settings: Settings) -> Celery:
    """The delivery app with its one task registered: one attempt per job message."""
    app = delivery_app(settings, name="forwarder-deliverer")
    sender = Sender(settings.hooks.callback)
    runner = DeliveryRunner(
        settings.hooks.callback, sender, StateStore(app.backend), CeleryJobQueues(app)
    )

    def deliver(task: Task, job: Any = None, **_: Any) -> str:
        return runner.run(DeliveryJob.from_kwargs({"job": job}))

    app.task(
        deliver,
        name=DELIVER_TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        # The state is the forwarder's own record; Celery's result of a job is of no use.
        ignore_result=True,
    )
    signals.worker_shutdown.connect(lambda **_: sender.close(), weak=False)
    return app


def run_deliverer(settings: Settings) -> int:
    """Consume delivery jobs until a shutdown signal; returns the exit code."""
    slots = settings.hooks.callback.delivery_slots or DEFAULT_SLOTS
    app = create_deliverer_app(settings)
    queue = callbacks_queue(settings.worker.queue)
    log.info(
        "forwarder deliverer: slots=%d queue=%s broker=%s visibility=%gs window=%gs",
        slots,
        queue,
        mask_url(str(app.conf.broker_url)),
        settings.hooks.callback.visibility_seconds,
        settings.hooks.callback.retry_window_seconds,
    )
    worker = app.Worker(
        pool="threads",
        concurrency=slots,
        queues=[queue],
        hostname=f"deliverer-{os.getpid()}@%h",
        loglevel=settings.worker.log_level,
        optimization="fair",
        without_gossip=True,
        without_mingle=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


def _die_with_parent() -> None:
    # Linux: a deliverer whose worker was killed outright must not be left running alone.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_deliverer_child(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """``forwarder deliver ARGV...`` beside this worker, sharing its output."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    child = subprocess.Popen(  # our own interpreter and arguments
        [sys.executable, "-m", "forwarder", "deliver", *argv], preexec_fn=preexec
    )
    log.info("deliverer started beside the worker: pid %d", child.pid)
    return child
