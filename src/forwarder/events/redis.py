"""Event logs as Redis Streams, beside the results: one stream per task.

Each event is one ``XADD`` (with ``MAXLEN ~`` bounding the stream); the events of up to
``FLUSH_INTERVAL`` go with an ``EXPIRE`` to the results' expiry in one script (``lua/append.lua``),
one round trip: the stream never outlives its task's result, and a model that streams more than
``max_length`` events keeps only about the last ``max_length``. Each entry carries its number; a
write interrupted after Redis ran it (a deadline firing while the reply was awaited) is sent again
with the next one, and the script skips what the stream already holds.
The ids are Redis's own (``<ms>-<seq>``); a reader asks for those after an id with ``XRANGE``.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

from forwarder.events.base import Event, EventLog
from forwarder.protocol import events_key_name

__all__ = ["DEFAULT_MAX_LENGTH", "RedisEventLog"]

DEFAULT_MAX_LENGTH = 10_000
# Events that come within this many seconds of a write go in the next one, pipelined: one round
# trip per interval rather than per token, at most this far behind while the model streams.
FLUSH_INTERVAL = 0.05
# The most events one read returns; a reader reads again from the last one.
READ_COUNT = 1_000
APPEND = (resources.files("forwarder.events") / "lua" / "append.lua").read_text()


class RedisEventLog(EventLog):
    flush_interval = FLUSH_INTERVAL

    def __init__(self, backend: Any, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.backend = backend
        self.max_length = max_length
        self.expires = math.ceil(backend.expires) if backend.expires else 0
        # No round trip here; the script is sent again whenever Redis lost it (a restart).
        self._append = backend.client.register_script(APPEND)

    def _write(self, task_id: str, events: list[tuple[str, str]], first: int) -> None:
        pairs = [part for event in events for part in event]
        self._append(
            keys=[events_key_name(task_id)], args=[self.max_length, self.expires, first, *pairs]
        )

    def _next_number(self, task_id: str) -> int:
        last = self.backend.client.xrevrange(events_key_name(task_id), count=1)
        if not last:
            return 1
        number = last[0][1].get(b"n")
        return int(number) + 1 if number is not None else 1

    def read(self, task_id: str, after: str | None = None) -> list[Event]:
        start = "-" if after is None else f"({after}"
        entries = self.backend.client.xrange(events_key_name(task_id), min=start, count=READ_COUNT)
        return [
            Event(_text(entry_id), _text(fields[b"k"]), _text(fields[b"d"]))
            for entry_id, fields in entries
        ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
