"""The retry step: a model server that cannot be reached gets the task again later.

A connection error (the model server may be restarting) sends the task back through the broker
with backoff, up to ``model_retries`` times; then the task fails with the last error. A retry is
a new message with one more ``retries``, so it is not a final state and runs no hooks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NoReturn

from forwarder.backoff import backoff
from forwarder.errors import ModelServerUnavailable
from forwarder.observability.metrics import recorder

__all__ = ["RetryPolicy"]

log = logging.getLogger(__name__)

# The first retry waits about a second, each next one twice as long, up to the cap.
FIRST_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    retries: int  # retries after the first attempt
    backoff_cap: float  # the longest wait between two attempts, in seconds
    queue: str  # named in the metrics

    def send_back(self, task: Any, error: ModelServerUnavailable) -> NoReturn:
        """Have Celery send ``task`` back with a countdown, or fail it once out of retries."""
        attempt = task.request.retries
        if attempt >= self.retries:
            raise ModelServerUnavailable(
                f"{error}; gave up after {attempt + 1} attempt(s)"
            ) from None
        delay = backoff(attempt, FIRST_RETRY_SECONDS, self.backoff_cap)
        log.warning(
            "task %s: model server unavailable, retry %d of %d in %.1f s",
            task.request.id,
            attempt + 1,
            self.retries,
            delay,
        )
        recorder().task_finished(self.queue, "retry")
        raise task.retry(exc=error, countdown=delay) from None
