"""The fault suite's bookkeeping: tasks submitted, results stored, model calls duplicated, tasks lost.

``FORWARDER_FAULTS_TASKS`` scales each case's task count for a full run;
``FORWARDER_FAULTS_REPORT=FILE`` appends each case's counts to FILE (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from forwarder.client.broker import ForwarderClient
from support.waiting import FINAL_STATES

__all__ = ["REPORT_PATH", "Tally", "scaled", "submit_all"]

REPORT_PATH = os.environ.get("FORWARDER_FAULTS_REPORT")


def scaled(default: int) -> int:
    """A task count: ``default``, or ``$FORWARDER_FAULTS_TASKS`` for a full run."""
    raw = os.environ.get("FORWARDER_FAULTS_TASKS")
    return int(raw) if raw else default


@dataclass
class Tally:
    """Submitted / stored / duplicated / lost for one fault case."""

    case: str
    submitted: list[str] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_calls: int = 0
    started_at: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def read(self, url: str) -> None:
        """Every final result stored in Redis for the submitted tasks."""
        with redis.Redis.from_url(url, socket_timeout=10) as conn:
            raws = conn.mget([f"celery-task-meta-{t}" for t in self.submitted])
        self.stored = {}
        for task_id, raw in zip(self.submitted, raws, strict=True):
            if raw is not None:
                meta = json.loads(raw)
                if meta.get("status") in FINAL_STATES:
                    self.stored[task_id] = meta

    def wait(self, url: str, timeout: float, interval: float = 0.25) -> None:
        """Read until every task has a final result, or ``timeout`` passes (then some are lost)."""
        deadline = time.monotonic() + timeout
        while True:
            self.read(url)
            if len(self.stored) == len(self.submitted) or time.monotonic() >= deadline:
                break
            time.sleep(interval)
        self.seconds = time.monotonic() - self.started_at

    @property
    def lost(self) -> list[str]:
        return [t for t in self.submitted if t not in self.stored]

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for meta in self.stored.values():
            counts[meta["status"]] = counts.get(meta["status"], 0) + 1
        return counts

    @property
    def duplicates(self) -> int:
        """Model calls beyond one per task that reached the model server."""
        return self.model_calls - self.states().get("SUCCESS", 0)

    def failures(self) -> dict[str, str]:
        return {
            t: f"{m.get('result')} {str(m.get('traceback'))[-1500:]}"
            for t, m in self.stored.items()
            if m["status"] != "SUCCESS"
        }

    def line(self) -> str:
        return (
            f"{self.case}: submitted={len(self.submitted)} stored={len(self.stored)} "
            f"duplicates={self.duplicates} lost={len(self.lost)} states={self.states()} "
            f"seconds={self.seconds:.1f}"
        )

    def report(self) -> None:
        """Print the counts (shown with -s or -rA) and append them to $FORWARDER_FAULTS_REPORT."""
        print(self.line())
        if REPORT_PATH:
            with open(REPORT_PATH, "a") as out:
                out.write(self.line() + "\n")


def submit_all(client: ForwarderClient, tally: Tally, payloads: Sequence[Any]) -> None:
    """Submit each payload, counting it in ``tally``."""
    for payload in payloads:
        tally.submitted.append(client.submit(payload))
