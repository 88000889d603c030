"""A task's event log: what its model streamed, in order, and the state it ended in.

Each event has an ``id`` (opaque text, increasing within one log: what SSE's ``Last-Event-ID``
carries), a ``kind`` and its ``data``, a JSON text kept as the model sent it:

- ``chunk``: one piece of the model's stream (an SSE ``data`` field, or one NDJSON line);
- ``progress``: an SSE event the model named ``progress``;
- ``state``: the last event of a log, ``{"status": ..., "error": ...}`` once the task is final.

One writer per task (the worker running it) appends; any number of readers read from an id on.
A backend's log fills in ``_write`` and ``read``; ``EventWriter`` numbers the events and batches
them for a backend where a write is costly (S3).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CHUNK", "KINDS", "PROGRESS", "STATE", "Event", "EventLog", "EventWriter"]

CHUNK = "chunk"
PROGRESS = "progress"
STATE = "state"
KINDS = (CHUNK, PROGRESS, STATE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    data: str  # JSON text

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "data": json.loads(self.data)}

    @property
    def final(self) -> bool:
        return self.kind == STATE


class EventLog:
    """The event logs of one result backend: a writer per task, reads from any process."""

    # Seconds a writer may hold events before writing them (0: each event as it comes).
    flush_interval = 0.0

    def writer(self, task_id: str) -> EventWriter:
        return EventWriter(self, task_id)

    def read(self, task_id: str, after: str | None = None) -> list[Event]:
        """The events after ``after`` (from the first with None), oldest first."""
        raise NotImplementedError

    def _write(self, task_id: str, events: list[tuple[str, str]], first: int) -> None:
        """Append ``events`` (kind, JSON text); ``first`` is the writer's number of the first."""
        raise NotImplementedError

    def _next_number(self, task_id: str) -> int:
        """The number the writer gives its first event: past a log another delivery left."""
        return 1


class EventWriter:
    """Appends one task's events in order, at most ``flush_interval`` behind."""

    def __init__(self, log: EventLog, task_id: str) -> None:
        self.log = log
        self.task_id = task_id
        self.count = 0
        self._next: int | None = None
        self._pending: list[tuple[str, str]] = []
        self._flushed_at = time.monotonic()
        self._failing = False

    def add(self, kind: str, data: str) -> None:
        self._pending.append((kind, data))
        self.count += 1
        if time.monotonic() - self._flushed_at >= self.log.flush_interval:
            self.flush()

    def finish(self, status: str, error: str | None) -> bool:
        """The final state, after every event before it: the log's last event. False if the
        log could not be written (a reader then ends the log from the stored state)."""
        self._pending.append((STATE, json.dumps({"status": status, "error": error})))
        self.flush()
        return not self._pending

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        try:
            if self._next is None:
                self._next = self.log._next_number(self.task_id)
            self.log._write(self.task_id, self._pending, self._next)
        except Exception as exc:
            # Kept for the next write: a store that blinks delays events, never drops them, and
            # never fails the model call (the result is stored, or not, through its own path).
            if not self._failing:
                log.warning(
                    "task %s: cannot write %d event(s) to its event log, kept for the next "
                    "write: %s: %s",
                    self.task_id,
                    len(self._pending),
                    type(exc).__name__,
                    exc,
                )
            self._failing = True
            return
        self._failing = False
        self._next += len(self._pending)
        self._pending = []
