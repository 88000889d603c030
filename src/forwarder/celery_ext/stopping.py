"""Takes nothing once the worker is shutting down, on every broker.

Celery's blocking loop (the gevent pool's) checks for a shutdown and then drains once more
(``try: maybe_shutdown() finally: drain``), and a drain polls until its timeout: a slot freed in
between took a new task after SIGTERM, and the warm shutdown ran it before exiting. The prefork
pool's event loop checks before it reads. Redis's transport asks ``worker_stopping`` before it
takes; the polling channels (the embedded broker's, SQS's) take through ``StopsTaking``.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from celery.worker import state

__all__ = ["StopsTaking", "worker_stopping"]


def worker_stopping() -> bool:
    """Whether a warm or cold shutdown has been asked for (SIGTERM, SIGQUIT, ``celery control``)."""
    # Celery's own test: an exit code, 0 included, is a shutdown; None or False is none.
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )


class StopsTaking:
    """A kombu polling channel that finds nothing once a shutdown is asked for.

    kombu's transport then sleeps its polling interval until the drain's timeout, as when a queue
    is empty, which yields to the other greenlets.
    """

    def drain_events(self, *args: Any, **kwargs: Any) -> Any:
        if worker_stopping():
            raise Empty()
        return super().drain_events(*args, **kwargs)  # type: ignore[misc]
