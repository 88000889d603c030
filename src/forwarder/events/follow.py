"""Following a task's event log until its final state: what the client and the gateway share.

A log ends with the ``state`` event its worker writes just after storing the result. A task that
never streamed has no log, and a worker lost before it wrote the end leaves a log without one:
once the stored state is final, a follower waits ``GRACE`` seconds for the end of a log that has
events, then ends it itself with an event of id ``END_ID`` made from the stored state. A reader
resuming after ``END_ID`` gets that final state again and nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from forwarder.events.base import STATE, Event, EventLog

__all__ = ["END_ID", "GRACE", "Follower"]

END_ID = "end"
GRACE = 1.0


class Follower:
    """One reader of one task's log: ``poll()`` returns what is new, ``done`` once it ended."""

    def __init__(
        self,
        log: EventLog,
        stored_state: Callable[[str], Any],
        task_id: str,
        after: str | None = None,
    ) -> None:
        self.log = log
        self.stored_state = stored_state  # task id -> TaskResult
        self.task_id = task_id
        self.after = after
        self.done = False
        self._final_since: float | None = None

    def poll(self) -> list[Event]:
        if self.after == END_ID:
            return self._end()
        events = self.log.read(self.task_id, self.after)
        for number, event in enumerate(events):
            if event.final:
                events = events[: number + 1]
                self.done = True
                break
        if events:
            self.after = events[-1].id
            return events
        state = self.stored_state(self.task_id)
        if not state.ready:
            return []
        now = time.monotonic()
        if self._final_since is None:
            self._final_since = now
        if self.after is None or now - self._final_since >= GRACE:
            return self._end(state)
        return []

    def _end(self, state: Any = None) -> list[Event]:
        state = state or self.stored_state(self.task_id)
        if not state.ready:
            return []
        self.done = True
        data = json.dumps({"status": state.status, "error": state.error})
        return [Event(END_ID, STATE, data)]
