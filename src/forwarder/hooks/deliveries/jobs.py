"""A delivery job: everything one callback's attempts need, as the broker carries it.

The job is the kwargs of one ``forwarder.deliver_callback`` message on ``<queue>-callbacks``. It
carries the body (so that every attempt sends the bytes the first one did, and the deliverer
never reads the result back), the URL and the request's own ``callback_auth`` as the task's
message carried them, and whether the configured default auth applies (the deliverer takes that
from its own settings, so the configured credentials never travel). A retry is the same job
published again with its attempt count and first attempt time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from forwarder.errors import PayloadError
from forwarder.protocol import CALLBACKS_QUEUE_SUFFIX, PARKED_CALLBACKS_SUFFIX

__all__ = ["DeliveryJob", "callbacks_queue", "parked_queue"]


def callbacks_queue(queue: str) -> str:
    """The queue of ``queue``'s delivery jobs."""
    return queue + CALLBACKS_QUEUE_SUFFIX


def parked_queue(queue: str) -> str:
    """Where the jobs that failed for good wait for a redelivery."""
    return queue + PARKED_CALLBACKS_SUFFIX


@dataclass(frozen=True)
class DeliveryJob:
    task_id: str
    url: str
    body: str  # JSON text
    queue: str  # the work queue whose task this is
    stored_at: float
    auth: Mapping[str, Any] | None = field(default=None, repr=False)  # the request's callback_auth
    default_auth: bool = False  # the configured default auth applies (same origin)
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0  # made so far
    first_attempt_at: float | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {"job": asdict(self)}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> DeliveryJob:
        raw = kwargs.get("job")
        if not isinstance(raw, Mapping):
            raise PayloadError("a delivery job's kwargs carry no job object")
        try:
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})
        except TypeError as exc:
            raise PayloadError(f"a delivery job is malformed: {exc}") from None

    def after_attempt(self, now: float) -> DeliveryJob:
        return replace(
            self,
            attempts=self.attempts + 1,
            first_attempt_at=now if self.first_attempt_at is None else self.first_attempt_at,
        )

    def fresh(self) -> DeliveryJob:
        """The job as a redelivery starts it: no attempts, a new window."""
        return replace(self, attempts=0, first_attempt_at=None)
