"""Crash-loop cap: each task's deliveries counted, and a dead-letter queue past the cap.

With late acks and reject-on-worker-lost, a task whose model call kills its worker process (the
reply makes it segfault or run out of memory, or the process is SIGKILLed) goes back to the queue
and would be delivered forever. Each delivery is counted before forwarding, at its admission
(``forwarder.worker.admission``), in the result backend's key/value store under
``forwarder-deliveries-<task id>-<retries>``. A retry after the model server was unavailable is a
new message with one more ``retries``, so it starts a new count: only deliveries that never
finished add up. On Redis the count is an INCR (expiring with the results) in one script with the
cancel-marker read and the STARTED store, so admission stays one round trip; other backends read
the marker and the count in one ``mget`` and write the count back.

The delivery after ``max_deliveries`` is not forwarded: a copy of the task (name, args, kwargs,
id, trace headers; plain JSON) goes to the dead-letter queue on the same broker, and the task ends
FAILURE with ``DeadLettered``. A task whose id cannot name a stored result (``/`` in it, say) is
copied there too, with the ``reason``, before anything is stored or forwarded: nothing could hold
its FAILURE. ``forwarder dead-letter list`` reads that queue without consuming it; ``replay``
sends tasks back to their queue with their count reset and their FAILURE forgotten, and removes
them from the dead-letter queue.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from forwarder.config.masking import masked_request
from forwarder.errors import DeadLettered
from forwarder.protocol import TRACE_KEYS

__all__ = ["CrashLoopGuard", "DeadLetter"]


@dataclass(frozen=True)
class DeadLetter:
    """What replaying a task needs, as the dead-letter queue's message body (JSON)."""

    task_id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int
    deliveries: int
    dead_lettered_at: float  # UTC epoch seconds
    trace: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why it is here, when not a crash loop

    @classmethod
    def from_body(cls, body: Any) -> DeadLetter:
        """Check a message body's fields; ``ValueError`` for anything else on the queue."""
        types: dict[str, type | tuple[type, ...]] = {
            "task_id": str,
            "task": str,
            "queue": str,
            "args": list,
            "kwargs": dict,
            "retries": int,
            "deliveries": int,
            "dead_lettered_at": (int, float),
            "trace": dict,
            "reason": str,
        }
        # ``reason`` is newer than the other fields: a letter written before it has none.
        if isinstance(body, dict) and "reason" not in body:
            body = {**body, "reason": ""}
        if not isinstance(body, dict) or set(body) != set(types):
            raise ValueError("not a dead letter")
        for name, kind in types.items():
            if not isinstance(body[name], kind) or isinstance(body[name], bool):
                raise ValueError(f"not a dead letter: {name} is {type(body[name]).__name__}")
        return cls(**body)

    def as_body(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, *, show_payload: bool = False, show_secrets: bool = False) -> dict[str, Any]:
        """What ``dead-letter list`` prints: no user data unless asked for, and the payload's
        callback credentials masked unless those are asked for too."""
        payload = self.args[0] if self.args else None
        shown: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.task,
            "queue": self.queue,
            "deliveries": self.deliveries,
            "retries": self.retries,
            "dead_lettered_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.dead_lettered_at)
            ),
            "payload_keys": sorted(payload) if isinstance(payload, dict) else None,
            "kwargs_keys": sorted(self.kwargs),
        }
        if self.reason:
            shown["reason"] = self.reason
        if show_payload:
            args = self.args
            if args and not show_secrets:
                args = [masked_request(payload), *args[1:]]
            shown.update(args=args, kwargs=self.kwargs)
        return shown


class CrashLoopGuard:
    """Ends a task delivered more than ``max_deliveries`` times: dead letter, then FAILURE."""

    def __init__(self, max_deliveries: int, queue: str, dead_letter_queue: str) -> None:
        self.max_deliveries = max_deliveries
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue

    def check(self, task: Any, deliveries: int) -> DeadLettered | None:
        """None while under the cap; past it, the copy is sent and the error returned."""
        if deliveries <= self.max_deliveries:
            return None
        message = (
            f"dead-lettered after {deliveries - 1} deliveries that did not finish "
            f"(max_deliveries={self.max_deliveries}); not forwarded again"
        )
        failed = self.send(task, deliveries - 1)
        if failed:
            # Ending it anyway: forwarding again could kill another worker.
            return DeadLettered(f"{message}; {failed} and it cannot be replayed")
        return DeadLettered(f"{message}; copied to {self.dead_letter_queue}")

    def send(self, task: Any, deliveries: int, reason: str = "") -> str | None:
        """Copy the task being delivered to the dead-letter queue; None, or why it failed."""
        request = task.request
        letter = DeadLetter(
            task_id=str(request.id),
            task=task.name,
            queue=self.queue,
            args=list(request.args or ()),
            kwargs=dict(request.kwargs or {}),
            retries=int(request.retries or 0),
            deliveries=deliveries,
            dead_lettered_at=time.time(),
            trace={
                key: value
                for key in TRACE_KEYS
                if isinstance(value := getattr(request, key, None), str)
            },
            reason=reason,
        )
        try:
            with task.app.producer_or_acquire() as producer:
                producer.publish(
                    letter.as_body(),
                    exchange="",
                    routing_key=self.dead_letter_queue,
                    serializer="json",
                    retry=True,
                )
        except Exception as exc:
            return f"its copy to {self.dead_letter_queue} failed ({type(exc).__name__}: {exc})"
        return None
