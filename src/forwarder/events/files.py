"""Event logs as JSON-lines files in the embedded default's results folder: one file per task.

Each write appends whole lines in one ``write`` to a file opened for appending, so a reader
never sees half an event from a finished write (a line not yet ended is left for its next read).
Ids are line numbers from 1; a writer for a task that already has a log (a second delivery)
numbers on from its last line. The files do not expire, like the results beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from forwarder.events.base import Event, EventLog
from forwarder.protocol import events_key_name

__all__ = ["FileEventLog"]


class FileEventLog(EventLog):
    def __init__(self, folder: str | bytes | Path) -> None:
        self.folder = Path(os.fsdecode(folder))

    def _path(self, task_id: str) -> Path:
        return self.folder / f"{events_key_name(task_id)}.jsonl"

    def _next_number(self, task_id: str) -> int:
        try:
            with self._path(task_id).open("rb") as file:
                return sum(1 for _ in file) + 1
        except FileNotFoundError:
            return 1

    def _write(self, task_id: str, events: list[tuple[str, str]], first: int) -> None:
        lines = "".join(
            json.dumps({"id": first + n, "k": kind, "d": data}) + "\n"
            for n, (kind, data) in enumerate(events)
        )
        with self._path(task_id).open("a", encoding="utf-8") as file:
            file.write(lines)

    def read(self, task_id: str, after: str | None = None) -> list[Event]:
        skip = int(after) if after is not None and after.isdigit() else 0
        try:
            text = self._path(task_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = []
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            if number > skip:
                fields: dict[str, Any] = json.loads(line)
                events.append(Event(str(fields["id"]), fields["k"], fields["d"]))
        return events
