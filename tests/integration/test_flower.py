"""Flower sees the workers and their tasks from ``--events`` alone; ``--hostname`` keeps two apart.

Flower runs with ``--enable_events=False``, so it never broadcasts ``enable_events``: every task
it lists was reported by a worker that sends its events on its own.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.localrun import HOST, Child, free_port
from support.env import env_changes
from support.processes import Processes
from support.waiting import wait_for, wait_one

pytestmark = [pytest.mark.integration]

pytest.importorskip("flower", reason="Flower not installed: pip install -e '.[dev]'")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """Flower's HTTP API on 127.0.0.1, watching the test's Redis; it never enables events."""
    port = free_port()
    command = [sys.executable, "-m", "celery", "-b", redis_url, "flower"]
    command += [f"--address={HOST}", f"--port={port}", "--enable_events=False"]
    env = env_changes(FLOWER_UNAUTHENTICATED_API="true")
    child = Child(command, tmp_path / "flower.log", env, cwd=tmp_path)
    try:
        child.wait_for(r"Connected to redis", timeout=60)
        url = f"http://{HOST}:{port}"
        wait_for(lambda: _answers(url), 30, lambda: f"Flower not answering:\n{child.tail()}")
        yield url
    finally:
        child.stop(timeout=10)


def _answers(url: str) -> bool:
    try:
        get_json(f"{url}/api/workers")
    except OSError:
        return False
    return True


@pytest.mark.timeout(150)
def test_flower_lists_both_workers_and_their_finished_tasks(
    flower: str, redis_url: str, procs: Processes
) -> None:
    echo = procs.echo()
    workers = [
        procs.worker(
            model_port=echo.port,
            broker_url=redis_url,
            queue="watched",
            extra_args=["--events", "--hostname", f"{name}@%h", "--log-format", "text"],
            wait=False,
        )
        for name in ("first", "second")
    ]
    for worker in workers:
        worker.wait_ready(60)
    host = socket.gethostname()
    names = {f"first@{host}", f"second@{host}"}
    for worker, name in zip(workers, sorted(names), strict=True):
        assert f"{name} ready." in worker.log()

    client = procs.client(broker_url=redis_url, queue="watched")
    ok = client.submit({"args": {"x": 1}})
    not_found = client.submit({"args": {"status_code": 404}})
    for task_id in (ok, not_found):
        assert wait_one(client, task_id).status == "SUCCESS"

    def listed() -> dict[str, Any] | None:
        tasks = get_json(f"{flower}/api/tasks")
        done = {task_id: tasks.get(task_id, {}) for task_id in (ok, not_found)}
        return done if all(t.get("state") == "SUCCESS" for t in done.values()) else None

    tasks = wait_for(listed, 30, lambda: f"Flower's tasks: {get_json(f'{flower}/api/tasks')}")
    assert {task["worker"] for task in tasks.values()} <= names
    assert names <= set(get_json(f"{flower}/api/workers?refresh=1"))

    # The finished task's line carries the model's status: a 404 reads as one.
    lines = [line for w in workers for line in w.log().splitlines() if not_found in line]
    succeeded = [line for line in lines if "succeeded" in line]
    assert len(succeeded) == 1 and "model replied HTTP 404" in succeeded[0], lines
