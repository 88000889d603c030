"""Post-inference hooks in a real worker: after every final state, isolated from the result.

Real Redis, the real echo model server, a worker in each pool, a callback receiver in this
process and the file sink; a down receiver or sink shows up in the counts, never in a result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.devtools.localrun import HOST, free_port
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_all

pytestmark = [pytest.mark.integration]

POOLS = ["prefork", "gevent"]
ENDPOINT = {
    "id": "end_1",
    "name": "echo",
    "type": "async",
    "bundle_id": "bun_1",
    "labels": {"t": "x"},
}


def write_config(path: Path, document: dict[str, Any]) -> list[str]:
    path.write_text(yaml.safe_dump(document))
    return ["--config", str(path)]


def hook_summary(log: str, hook: str) -> dict[str, int]:
    """The counts the worker's processes logged when they stopped, summed over processes."""
    totals = {"attempts": 0, "successes": 0, "failures": 0}
    for match in re.finditer(
        rf"{hook} attempts=(\d+) successes=(\d+) failures=(\d+)", log, flags=re.MULTILINE
    ):
        for name, value in zip(totals, match.groups(), strict=True):
            totals[name] += int(value)
    return totals


@pytest.mark.parametrize("pool", POOLS)
def test_hooks_run_after_every_final_state(
    pool: str,
    procs: Processes,
    redis_url: str,
    callback_receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    records = tmp_path / "records.jsonl"
    config = write_config(
        tmp_path / "hooks.yaml",
        {
            "hooks": ["callback", "logging"],
            "endpoint": ENDPOINT,
            "callback": {"default_url": callback_receiver.url()},
            "logging": {"sink": "file", "path": str(records)},
        },
    )
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool=pool, broker_url=redis_url, concurrency=2, extra_args=config
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    good = [client.submit({"args": {"n": n}}) for n in range(6)]
    own_url = client.submit({"args": {"n": 6}, "callback_url": callback_receiver.url("/own")})
    bad = client.submit([1, 2, 3])  # not a JSON object: that task fails, its hooks still run
    task_ids = [*good, own_url, bad]
    results = wait_all(client, task_ids, timeout=30)

    assert {t: results[t].status for t in task_ids} == {
        **dict.fromkeys([*good, own_url], "SUCCESS"),
        bad: "FAILURE",
    }
    assert results[good[3]].result == {"result": json.dumps({"n": 3}), "status_code": 200}

    calls = callback_receiver.calls_for(task_ids, timeout=10)
    assert calls[good[3]].json() == {
        "result": json.dumps({"n": 3}),
        "status_code": 200,
        "task_id": good[3],
    }
    assert calls[own_url].path == "/own"
    assert {calls[t].path for t in good} == {"/callback"}
    assert calls[bad].json()["status"] == "FAILURE"
    assert "PayloadError" in calls[bad].json()["error"]

    assert worker.stop() == 0
    logged = [json.loads(line) for line in records.read_text().splitlines()]
    by_task = {r["RESPONSE_BODY"]["task_id"]: r for r in logged}
    assert len(logged) == len(task_ids)
    assert set(by_task) == set(task_ids)
    record = by_task[good[0]]
    assert json.loads(record["REQUEST_BODY"]) == {"args": {"n": 0}}
    assert record["RESPONSE_BODY"]["status_code"] == 200
    assert (record["ENDPOINT_ID"], record["ENDPOINT_NAME"], record["LABELS"]) == (
        "end_1",
        "echo",
        {"t": "x"},
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["EMITTED_AT"])
    log = worker.log()
    assert hook_summary(log, "callback") == {"attempts": 8, "successes": 8, "failures": 0}
    assert hook_summary(log, "logging") == {"attempts": 8, "successes": 8, "failures": 0}


@pytest.mark.parametrize("pool", POOLS)
def test_a_down_callback_receiver_is_counted_and_changes_no_result(
    pool: str, procs: Processes, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "hooks.yaml",
        {
            "hooks": ["callback", "logging"],
            "callback": {
                "default_url": f"http://{HOST}:{free_port()}/down",
                # The hook's own tries in the slot: a queued delivery's failure is the deliverer's.
                "delivery": "inline",
                "max_attempts": 2,
                "backoff_seconds": 0.05,
                "backoff_max_seconds": 0.05,
                "timeout_seconds": 2,
            },
            "logging": {"sink": "file", "path": str(tmp_path / "records.jsonl")},
        },
    )
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool=pool, broker_url=redis_url, concurrency=2, extra_args=config
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    task_ids = [client.submit({"args": {"n": n}}) for n in range(5)]
    results = wait_all(client, task_ids, timeout=30)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    assert results[task_ids[2]].result == {"result": json.dumps({"n": 2}), "status_code": 200}

    assert worker.stop() == 0
    log = worker.log()
    assert len(re.findall(r"hook callback failed for task", log)) == 5
    assert hook_summary(log, "callback") == {"attempts": 5, "successes": 0, "failures": 5}
    # The hook after the failing one still ran for every task.
    assert hook_summary(log, "logging") == {"attempts": 5, "successes": 5, "failures": 0}
