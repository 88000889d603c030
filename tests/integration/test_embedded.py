"""The embedded default (no broker URL): kombu's filesystem transport and file results."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from forwarder.protocol import LEGACY_TASK_NAME, LIRA_TASK_NAME
from support.processes import Processes
from support.waiting import wait_all, wait_for

pytestmark = [pytest.mark.integration]

PAYLOAD = {"args": {"x": 1, "y": [1, 2]}}
CONTRACT = {"result": json.dumps({"x": 1, "y": [1, 2]}), "status_code": 200}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_embedded_default_round_trip(pool: str, procs: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, pool=pool, queue="embedded", data_dir=data_dir)
    assert "embedded" in worker.log()
    client = procs.client(data_dir=data_dir, queue="embedded")

    ids = [client.submit(PAYLOAD, task_name=name) for name in (LIRA_TASK_NAME, LEGACY_TASK_NAME)]
    failing = client.submit({"args": {"raw_text": "plain text"}})
    results = wait_all(client, [*ids, failing], timeout=20)
    assert [(results[t].status, results[t].result) for t in ids] == [("SUCCESS", CONTRACT)] * 2

    failed = results[failing]
    assert failed.status == "FAILURE", failed
    assert failed.error is not None and "JSON" in failed.error
    stored = json.loads((data_dir / "results" / f"celery-task-meta-{failing}").read_text())
    assert stored["status"] == "FAILURE"
    assert stored["result"]["exc_type"] == "ModelResponseError"
    custom = json.loads(stored["result"]["custom"])
    assert custom["error_metadata"].startswith("Internal failure\n")
    assert echo.stats()["predict_requests"] == 3
    assert worker.running


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_embedded_warm_shutdown_loses_nothing(pool: str, procs: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    echo = procs.echo()
    first = procs.worker(
        model_port=echo.port, pool=pool, queue="embedded", data_dir=data_dir, concurrency=2
    )
    client = procs.client(data_dir=data_dir, queue="embedded")
    ids = [client.submit({"args": {"n": n, "delay": 1.5}}) for n in range(6)]
    wait_for(
        lambda: sum(client.get(t).status == "STARTED" for t in ids) == 2,
        15,
        lambda: [client.get(t).status for t in ids],
    )
    assert first.stop(signal.SIGTERM, timeout=30) == 0, first.log()[-3000:]
    done_by_first = [t for t in ids if client.get(t).status == "SUCCESS"]
    assert len(done_by_first) >= 2, [client.get(t).status for t in ids]

    procs.worker(
        model_port=echo.port, pool=pool, queue="embedded", data_dir=data_dir, concurrency=2
    )
    results = wait_all(client, ids, timeout=30)
    assert [results[t].status for t in ids] == ["SUCCESS"] * 6
    assert echo.stats()["predict_requests"] == 6, "a task ran more or less than exactly once"
