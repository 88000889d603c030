"""Metrics, logs and trace context from a real worker, both pools, after a known mix of tasks.

Real Redis, the echo model server, a callback receiver that is down (every callback fails) and
the file sink. Under prefork the children are recycled every 2 tasks, so the counts must survive
their exits.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from forwarder.devtools.localrun import HOST, free_port
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_for

pytestmark = [pytest.mark.integration]

SECRET = "hunter2-secret-password"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("forwarder_")
    }


def hooks_config(path: Path, callback_url: str, records: Path) -> list[str]:
    path.write_text(
        yaml.safe_dump(
            {
                "hooks": ["callback", "logging"],
                "callback": {"default_url": callback_url, "max_attempts": 1, "delivery": "inline"},
                "logging": {"sink": "file", "path": str(records)},
            }
        )
    )
    return ["--config", str(path)]


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_metrics_count_a_known_mix_and_logs_name_every_task(
    pool: str, procs: Processes, redis_url: str, tmp_path: Path
) -> None:
    down = f"http://{HOST}:{free_port()}/callback"
    client = procs.client(broker_url=redis_url, queue="inference")
    good = [client.submit({"args": {"n": n}}) for n in range(6)]
    good.append(
        client.submit(
            {
                "args": {"n": 6},
                "callback_url": down,
                "callback_auth": {"kind": "basic", "username": "u", "password": SECRET},
            }
        )
    )
    bad = [client.submit([1, 2]), client.submit("text")]
    expired = client.submit({"args": {"n": 7}}, ttl_seconds=0.2)
    canceled = client.submit({"args": {"n": 8}})
    assert client.cancel(canceled).status == "CANCELED"
    time.sleep(0.3)  # past the TTL before any worker reads the queue
    task_ids = [*good, *bad, expired, canceled]

    echo = procs.echo()
    metrics_port = free_port()
    worker = procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        concurrency=2,
        env={"CELERY_WORKER_MAX_TASKS_PER_CHILD": "2"} if pool == "prefork" else None,
        extra_args=[
            "--metrics-port", str(metrics_port),
            "--metrics-host", "127.0.0.1",
            *hooks_config(tmp_path / "hooks.yaml", down, tmp_path / "records.jsonl"),
        ],
    )  # fmt: skip
    for task_id in task_ids:
        client.wait(task_id, timeout=30)

    q = 'queue="inference"'
    expected = {
        f"forwarder_tasks_received_total{{{q}}}": 11,
        f'forwarder_tasks_finished_total{{{q},status="success"}}': 7,
        f'forwarder_tasks_finished_total{{{q},status="failure"}}': 2,
        f'forwarder_tasks_finished_total{{{q},status="expired"}}': 1,
        f'forwarder_tasks_finished_total{{{q},status="canceled"}}': 1,
        'forwarder_hook_attempts_total{hook="callback"}': 11,
        'forwarder_hook_failures_total{hook="callback"}': 11,
        'forwarder_hook_attempts_total{hook="logging"}': 11,
        'forwarder_hook_successes_total{hook="logging"}': 11,
        'forwarder_sink_records_total{outcome="sent",sink="file"}': 11,
        f"forwarder_model_call_seconds_count{{{q}}}": 9,  # the expired and canceled made none
        f"forwarder_queue_wait_seconds_count{{{q}}}": 11,
    }
    last: dict[str, float] = {}

    def counted() -> bool:
        nonlocal last
        last = scrape(metrics_port)
        return all(last.get(name) == value for name, value in expected.items())

    wait_for(counted, 15, lambda: f"{ {n: last.get(n) for n in expected} } != {expected}")
    assert "forwarder_hook_successes_total" not in str(
        {k: v for k, v in last.items() if 'hook="callback"' in k and v}
    )
    assert last["forwarder_worker_resident_memory_bytes"] > 10_000_000
    assert last.get(f"forwarder_tasks_in_flight{{{q}}}", 0) == 0

    assert worker.stop() == 0
    log = worker.log()
    assert SECRET not in log
    # Result bodies stay out of INFO: the model's reply to task 3 is nowhere in the log.
    assert '\\"n\\": 3' not in log and '"n": 3' not in log
    lines_about = {task_id: 0 for task_id in task_ids}
    for line in log.splitlines():
        mentioned = [task_id for task_id in task_ids if task_id in line]
        if not mentioned:
            continue
        parsed = json.loads(line)  # every line about a task is a JSON line...
        assert parsed["task_id"] in mentioned, line  # ...naming that task
        assert parsed["queue"] == "inference", line
        lines_about[parsed["task_id"]] += 1
    assert all(lines_about.values()), lines_about


def test_trace_context_reaches_the_model_server_and_the_callback(
    procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool="gevent",
        broker_url=redis_url,
        concurrency=2,
        extra_args=hooks_config(
            tmp_path / "hooks.yaml", callback_receiver.url(), tmp_path / "records.jsonl"
        ),
    )
    client = procs.client(broker_url=redis_url, queue="inference")
    traced = client.app.send_task(
        "ml_serve.celery_service.exec_func",
        args=[{"args": {"traced": True}}, None],
        kwargs={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
        queue="inference",
    ).id
    assert client.wait(traced, timeout=15).status == "SUCCESS"
    assert echo.stats()["last_traceparent"] == TRACEPARENT
    wait_for(lambda: callback_receiver.received, 10, "no callback")
    headers = {k.lower(): v for k, v in callback_receiver.received[0].headers.items()}
    assert (headers["traceparent"], headers["tracestate"]) == (TRACEPARENT, "vendor=1")

    untraced = client.submit({"args": {"traced": False}})
    assert client.wait(untraced, timeout=15).status == "SUCCESS"
    assert echo.stats()["last_traceparent"] is None
    assert re.fullmatch(r"[0-9a-f-]{36}", untraced)
