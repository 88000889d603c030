"""A callback's delivery state, stored beside the task's result in the result backend.

One JSON record per task under ``forwarder-callback-<task id>``: ``pending``, ``delivered`` or
``failed``, the attempts made, the last reply's status code and error, when the next attempt is
due, and when the result was stored and the callback delivered. It names the receiver by its
origin only and holds no credential: webhook URLs often carry a token, and auth never leaves the
job. Every backend stores it as it stores any key (Redis with the results' expiry, a file, an S3
object), so the file, Redis and S3 backends all keep it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from forwarder.protocol import CALLBACK_STATE_KEY_PREFIX, callback_state_key_name

__all__ = ["DELIVERED", "DELIVERY_STATES", "FAILED", "PENDING", "DeliveryState", "StateStore"]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)


@dataclass(frozen=True)
class DeliveryState:
    """Where one task's callback stands; times are UTC epoch seconds."""

    task_id: str
    status: str
    receiver: str  # the URL's origin
    stored_at: float  # when the result was stored (the lag is counted from here)
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None
    redeliveries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DeliveryState | None:
        """The record read back; None when it is not one (another writer's, or damaged)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except TypeError:
            return None

    def updated(self, **changes: Any) -> DeliveryState:
        return replace(self, **changes)


class StateStore:
    """Reads and writes delivery states through a forwarder result backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def get(self, task_id: str) -> DeliveryState | None:
        raw = self.backend.get(self.backend.key_t(callback_state_key_name(task_id)))
        if raw is None:
            return None
        try:
            return DeliveryState.from_dict(json.loads(raw))
        except ValueError:
            return None

    def put(self, state: DeliveryState) -> None:
        key = self.backend.key_t(callback_state_key_name(state.task_id))
        self.backend.set(key, json.dumps(state.as_dict()))

    def all(self) -> Iterator[DeliveryState]:
        """Every stored state, in the backend's listing order."""
        for key in self.backend.keys_with_prefix(CALLBACK_STATE_KEY_PREFIX):
            state = self.get(key[len(CALLBACK_STATE_KEY_PREFIX) :])
            if state is not None:
                yield state
