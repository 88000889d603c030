"""Bounded polling: for a condition, and for tasks to reach a final state."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from forwarder.client.broker import ForwarderClient, TaskResult

__all__ = ["FINAL_STATES", "wait_all", "wait_for", "wait_one"]

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.05,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    ``message`` may be a callable, to describe the state at the time of the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g} s: {text}")
        time.sleep(interval)


def wait_all(
    client: ForwarderClient, task_ids: Sequence[str], timeout: float, interval: float = 0.05
) -> dict[str, TaskResult]:
    """Poll until every task is in a final state; fail with their states after ``timeout``."""
    deadline = time.monotonic() + timeout
    done: dict[str, TaskResult] = {}
    while True:
        for task_id in task_ids:
            if task_id not in done:
                current = client.get(task_id)
                if current.status in FINAL_STATES:
                    done[task_id] = current
        if len(done) == len(task_ids):
            return done
        if time.monotonic() >= deadline:
            pending = {t: client.get(t).status for t in task_ids if t not in done}
            pytest.fail(f"after {timeout:g} s, {len(pending)} task(s) not done: {pending}")
        time.sleep(interval)


def wait_one(client: ForwarderClient, task_id: str, timeout: float = 15.0) -> TaskResult:
    """One task's final result; fails after ``timeout`` seconds."""
    return wait_all(client, [task_id], timeout)[task_id]
