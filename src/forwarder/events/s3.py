"""Event logs as S3 objects beside the results: one object per batch of events.

S3 has no append and charges by request, so a writer holds events for up to
``FLUSH_INTERVAL`` seconds and writes each batch as one object,
``PREFIX/forwarder-events-<task id>/<first event number, 10 digits>.jsonl``. A reader lists the
task's objects after the one holding its last event (``ListObjectsV2`` with ``StartAfter``, so
the results' ``s3:ListBucket`` permission covers it) and reads them in order. A live reader is
thus up to one interval behind; a task's whole stream costs one PUT per interval, not per event.
The objects expire with a lifecycle rule on the prefix, as the cancel markers do.
"""

from __future__ import annotations

import json
from typing import Any

from forwarder.events.base import Event, EventLog
from forwarder.protocol import events_key_name

__all__ = ["FLUSH_INTERVAL", "S3EventLog"]

FLUSH_INTERVAL = 0.5
_DIGITS = 10


class S3EventLog(EventLog):
    flush_interval = FLUSH_INTERVAL

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _folder(self, task_id: str) -> str:
        return f"{self.backend.location.prefix}{events_key_name(task_id)}/"

    def _keys(self, task_id: str, start_after: str = "") -> list[str]:
        keys: list[str] = []
        options = {"Bucket": self.backend.location.bucket, "Prefix": self._folder(task_id)}
        if start_after:
            options["StartAfter"] = start_after
        for page in self.backend.client.get_paginator("list_objects_v2").paginate(**options):
            keys += [item["Key"] for item in page.get("Contents", ())]
        return keys

    def _next_number(self, task_id: str) -> int:
        keys = self._keys(task_id)
        if not keys:
            return 1
        last = keys[-1]
        return int(last.rsplit("/", 1)[1].split(".")[0]) + len(self._objects(last))

    def _objects(self, key: str) -> list[dict[str, Any]]:
        reply = self.backend.client.get_object(Bucket=self.backend.location.bucket, Key=key)
        return [json.loads(line) for line in reply["Body"].read().decode().splitlines()]

    def _write(self, task_id: str, events: list[tuple[str, str]], first: int) -> None:
        body = "".join(
            json.dumps({"id": first + n, "k": kind, "d": data}) + "\n"
            for n, (kind, data) in enumerate(events)
        )
        self.backend.set(f"{events_key_name(task_id)}/{first:0{_DIGITS}d}.jsonl", body)

    def read(self, task_id: str, after: str | None = None) -> list[Event]:
        skip = int(after) if after is not None and after.isdigit() else 0
        keys = self._keys(task_id)
        # Only the last object starting at or before the event after ``skip`` can hold it.
        numbers = [int(key.rsplit("/", 1)[1].split(".")[0]) for key in keys]
        start = max([i for i, n in enumerate(numbers) if n <= skip + 1] or [0])
        events = []
        for key in keys[start:]:
            for fields in self._objects(key):
                if fields["id"] > skip:
                    events.append(Event(str(fields["id"]), fields["k"], fields["d"]))
        return events
