"""The fault suite's fixtures: the integration suite's, loaded from its conftest, plus counting.

``tests/integration/conftest.py`` is loaded as a module of its own (the tests use
``--import-mode=importlib`` and have no packages) and its fixtures are re-exported here, so a
fault test starts the same real processes (redis-server, echo model server, workers, moto) on
127.0.0.1 with the same bounded waits. What is added is the bookkeeping every fault case reports:
tasks submitted, results stored, duplicated model calls and tasks lost.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

_INTEGRATION = Path(__file__).resolve().parent.parent / "integration" / "conftest.py"
_spec = importlib.util.spec_from_file_location(
    "forwarder_faults_integration_conftest", _INTEGRATION
)
assert _spec is not None and _spec.loader is not None
integration = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = integration
_spec.loader.exec_module(integration)

# Re-exported: pytest collects fixtures from this module's namespace.
procs = integration.procs
redis_server = integration.redis_server
redis_url = integration.redis_url
callback_receiver = integration.callback_receiver
moto_server = integration.moto_server
moto = integration.moto
moto_here = integration.moto_here
helpers = integration.helpers

FINAL_STATES = integration.FINAL_STATES
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


def submit_all(client: Any, tally: Tally, payloads: Sequence[Any]) -> None:
    for payload in payloads:
        tally.submitted.append(client.submit(payload))


@pytest.fixture(scope="session")
def faults() -> Any:
    """The counting helpers above, for test modules (which do not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(Tally=Tally, scaled=scaled, submit_all=submit_all)
