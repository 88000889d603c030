"""A task id from the broker that cannot name a stored result is refused, never lost.

A real worker on the embedded broker (whose file result backend turned ``/`` in an id into a
FileNotFoundError, and the message was acknowledged with nothing stored): a bad id and a good id
are published; the good one succeeds, the bad one is on the dead-letter queue with the reason,
and nothing was written outside the results folder.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from forwarder.client.dead_letters import open_dead_letters
from forwarder.protocol import task_id_problem
from support.processes import Processes
from support.waiting import wait_for, wait_one

pytestmark = pytest.mark.integration

QUEUE = "ids"


@pytest.mark.parametrize(
    "task_id", ["../escape", "a/b", ".hidden", "", "x" * 201, "a b", "a\nb", "é"]
)
def test_ids_that_cannot_name_a_file_are_refused_with_the_reason(task_id: str) -> None:
    problem = task_id_problem(task_id)
    assert problem is not None
    assert "allowed: " in problem


@pytest.mark.parametrize("task_id", ["6f1c0d6e-1111-4aaa-8bbb-1234567890ab", "job_1.2:3"])
def test_uuid_and_plain_ids_are_allowed(task_id: str) -> None:
    assert task_id_problem(task_id) is None


@pytest.mark.timeout(90)
def test_a_bad_id_is_dead_lettered_and_the_next_task_succeeds(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, data_dir=data_dir, queue=QUEUE, concurrency=1)
    client = procs.client(data_dir=data_dir, queue=QUEUE)
    bad = "../outside/x"
    client.submit({"args": {"n": 1}}, task_id=bad)
    good = client.submit({"args": {"n": 2}})
    assert wait_one(client, good, timeout=40).status == "SUCCESS"

    store = open_dead_letters(client.settings)

    def refused() -> list[dict[str, object]] | None:
        letters = [e.letter for e in store.entries() if e.letter and e.letter.task_id == bad]
        return [letter.summary() for letter in letters] or None

    shown = wait_for(refused, 20, lambda: f"no dead letter for {bad!r}:\n{worker.log()}")
    assert len(shown) == 1
    assert "is not allowed" in str(shown[0]["reason"])
    assert shown[0]["payload_keys"] == ["args"]
    assert "is not allowed" in worker.log()
    assert echo.stats()["predict_requests"] == 1, "the refused task reached the model server"
    assert not (data_dir / "outside").exists()
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
