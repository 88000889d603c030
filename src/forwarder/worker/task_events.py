"""The event logs of the tasks a worker process runs: a writer per running task, and its end.

A task's writer is handed to its model call; it writes nothing unless the reply is a stream. A
task that streamed gets its final state as the last event of its log once the result is stored
(from the lifecycle's ``finish``), so a reader that sees it can read the result. Writing the log
is like a hook: a failure is logged and never changes the task's result (events a store refused
are kept for its next write, see ``forwarder.events.base``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from forwarder.events import EventLog, EventWriter

__all__ = ["TaskEvents"]

log = logging.getLogger(__name__)


class TaskEvents:
    """Event writers of the running tasks of this process (threads or greenlets share it)."""

    def __init__(self, event_log: Callable[[Any], EventLog]) -> None:
        self._event_log = event_log  # result backend -> the event log beside it
        self._writers: dict[str, EventWriter] = {}

    def writer(self, task_id: str, backend: Any) -> EventWriter:
        writer = self._event_log(backend).writer(task_id)
        self._writers[task_id] = writer
        return writer

    def discard(self, task_id: str) -> None:
        """Forget a task that ends without a final state here (sent back to be retried)."""
        self._writers.pop(task_id, None)

    def finish(self, task_id: str, status: str, error: str | None) -> None:
        writer = self._writers.pop(task_id, None)
        if writer is None or not writer.count:
            return
        if not writer.finish(status, error):
            log.warning(
                "task %s: its final state is not in its event log; readers end the log from "
                "the stored state",
                task_id,
            )
