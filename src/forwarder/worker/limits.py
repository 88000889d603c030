"""The limits a client may set on a task, sent in its kwargs (the args stay model-engine's
``[payload, arrival_timestamp]``):

- ``ttl_seconds`` with ``submitted_at`` (UTC epoch seconds of the send): a task that has waited
  longer than that, counted from the send (retries included), is not forwarded; it ends
  ``EXPIRED``. Clocks are compared, so client and worker need synchronised clocks.
- ``timeout_seconds``: the whole model call, not each socket read, must end within it; past it
  the call is abandoned (the connection dropped) and the task ends ``TIMEOUT``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from forwarder.errors import PayloadError, TaskExpired
from forwarder.protocol import SUBMITTED_KWARG, TIMEOUT_KWARG, TTL_KWARG

__all__ = ["TaskLimits"]


def _number(value: Any, name: str, what: str, *, positive: bool) -> float | None:
    # type() rather than isinstance(): a bool is not a number of seconds.
    if value is None:
        return None
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise PayloadError(f"{name} must be {what}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TaskLimits:
    """The limits a client set on a task; ``None`` is no limit."""

    ttl_seconds: float | None = None
    timeout_seconds: float | None = None
    submitted_at: float | None = None  # UTC epoch seconds of the client's send

    @classmethod
    def parse(
        cls, ttl_seconds: Any = None, timeout_seconds: Any = None, submitted_at: Any = None
    ) -> TaskLimits:
        """Checked limits; ``PayloadError`` naming the value that is not allowed."""
        limits = cls(
            ttl_seconds=_number(
                ttl_seconds, TTL_KWARG, "a positive number of seconds", positive=True
            ),
            timeout_seconds=_number(
                timeout_seconds, TIMEOUT_KWARG, "a positive number of seconds", positive=True
            ),
            submitted_at=_number(
                submitted_at, SUBMITTED_KWARG, "a UTC epoch time in seconds", positive=False
            ),
        )
        if limits.ttl_seconds is not None and limits.submitted_at is None:
            raise PayloadError(
                f"{TTL_KWARG} needs {SUBMITTED_KWARG}, the UTC epoch time of the send in seconds"
            )
        return limits

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any]) -> TaskLimits:
        """Take the limits out of a task's kwargs, leaving the keys the worker does not know."""
        return cls.parse(
            kwargs.pop(TTL_KWARG, None),
            kwargs.pop(TIMEOUT_KWARG, None),
            kwargs.pop(SUBMITTED_KWARG, None),
        )

    def as_kwargs(self) -> dict[str, float]:
        values = {
            TTL_KWARG: self.ttl_seconds,
            TIMEOUT_KWARG: self.timeout_seconds,
            SUBMITTED_KWARG: self.submitted_at,
        }
        return {name: value for name, value in values.items() if value is not None}

    def expired(self, now: float) -> TaskExpired | None:
        if self.ttl_seconds is None or self.submitted_at is None:
            return None
        waited = now - self.submitted_at
        if waited <= self.ttl_seconds:
            return None
        return TaskExpired(
            f"waited {waited:.3f} s in the queue, longer than its {TTL_KWARG}={self.ttl_seconds:g}"
            "; not forwarded to the model server"
        )
