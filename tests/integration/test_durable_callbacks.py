"""Queued callbacks in real workers: delivered out of the slot, their state stored beside the result.

Real redis-server (or the embedded broker, or SQS and S3 on moto), the echo model server, a
worker that starts its deliverer beside itself, and the callback receiver of ``support.callbacks``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from forwarder.hooks.deliveries.jobs import callbacks_queue, parked_queue
from support.aws import MotoServer
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_all, wait_for

pytestmark = [pytest.mark.integration]

OLD_SECRET = "whsec_" + base64.b64encode(b"the-old-signing-secret").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"the-new-signing-secret").decode()


def write_config(path: Path, callback: dict[str, Any]) -> list[str]:
    path.write_text(yaml.safe_dump({"hooks": ["callback"], "callback": callback}))
    return ["--config", str(path)]


def forwarder(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def states(broker: list[str], *extra: str) -> dict[str, dict[str, Any]]:
    done = forwarder("callbacks", "list", *broker, *extra)
    assert done.returncode == 0, done.stderr
    return {s["task_id"]: s for s in map(json.loads, done.stdout.splitlines())}


def signed_by(key_secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(key_secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.digest(key, content, hashlib.sha256)).decode()
    return expected in headers["webhook-signature"].split()


@pytest.mark.parametrize("broker_kind", ["redis", "embedded"])
def test_callbacks_are_delivered_out_of_the_slot_with_their_state(
    broker_kind: str,
    procs: Processes,
    redis_url: str,
    callback_receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "callbacks.yaml",
        {
            "default_url": callback_receiver.url(),
            "signing_secret": [NEW_SECRET, OLD_SECRET],
            "delivery_slots": 2,
        },
    )
    broker = (
        {"broker_url": redis_url} if broker_kind == "redis" else {"data_dir": tmp_path / "data"}
    )
    broker_args = (
        ["--broker-url", redis_url]
        if broker_kind == "redis"
        else ["--data-dir", str(tmp_path / "data")]
    )
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, concurrency=2, extra_args=config, **broker)
    client = procs.client(queue="inference", **broker)
    task_ids = [client.submit({"args": {"n": n}}) for n in range(5)]
    wait_all(client, task_ids, timeout=30)
    calls = callback_receiver.calls_for(task_ids, timeout=30)
    first = calls[task_ids[0]]
    assert first.json() == {"result": '{"n": 0}', "status_code": 200, "task_id": task_ids[0]}
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert headers["webhook-id"] == f"msg_{task_ids[0]}"
    # Rotation: one signature per secret, so a receiver knowing either accepts the call.
    assert len(headers["webhook-signature"].split()) == 2
    assert signed_by(OLD_SECRET, headers, first.body)
    assert signed_by(NEW_SECRET, headers, first.body)

    stored = wait_for(
        lambda: (
            (s := states(broker_args))
            and all(s.get(t, {}).get("status") == "delivered" for t in task_ids)
            and s
        ),
        20,
        "delivery states",
    )
    one = stored[task_ids[0]]
    assert one["attempts"] == 1
    assert one["last_status_code"] == 200
    assert one["receiver"] == callback_receiver.url().rsplit("/", 1)[0]
    assert one["delivered_at"] >= one["stored_at"]
    assert "deliverer started beside the worker" in worker.log()
    assert "delivered after 1 attempt(s)" in worker.log()


def test_a_refusing_receiver_gets_one_attempt_then_a_redelivery_once_fixed(
    procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    callback_receiver.statuses = [404]
    config = write_config(
        tmp_path / "callbacks.yaml",
        {"default_url": callback_receiver.url(), "delivery_backoff_seconds": 0.2},
    )
    echo = procs.echo()
    procs.worker(model_port=echo.port, broker_url=redis_url, extra_args=config)
    client = procs.client(broker_url=redis_url, queue="inference")
    task_id = client.submit({"args": {"n": 1}})
    wait_all(client, [task_id], timeout=30)
    broker = ["--broker-url", redis_url]
    failed = wait_for(
        lambda: states(broker, "--failed").get(task_id), 20, "no failed delivery state"
    )
    assert failed["attempts"] == 1
    assert failed["last_status_code"] == 404
    assert "HTTP 404" in failed["last_error"]
    assert len(callback_receiver.received) == 1

    # The receiver is fixed (it answers 200 from now on): a redelivery goes through once.
    done = forwarder("callbacks", "redeliver", task_id, *broker)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"task_id": task_id, "redelivered": True}
    wait_for(lambda: len(callback_receiver.received) >= 2, 20, "no redelivery")
    delivered = wait_for(
        lambda: (s := states(broker).get(task_id)) and s["status"] == "delivered" and s,
        20,
        "not delivered",
    )
    assert delivered["redeliveries"] == 1
    assert callback_receiver.received[1].body == callback_receiver.received[0].body
    again = forwarder("callbacks", "redeliver", task_id, *broker)
    assert again.returncode == 1
    assert "has not failed" in again.stderr


def test_the_gateway_shows_the_delivery_and_redelivers_a_failed_one(
    procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    callback_receiver.statuses = [410]
    config = write_config(tmp_path / "callbacks.yaml", {"default_url": callback_receiver.url()})
    echo = procs.echo()
    procs.worker(model_port=echo.port, broker_url=redis_url, extra_args=config)
    gateway = procs.gateway(broker_url=redis_url)
    submitted = requests.post(f"{gateway.url}/v1/async-tasks", json={"args": {"n": 1}}, timeout=10)
    task_id = submitted.json()["task_id"]

    def view() -> dict[str, Any]:
        return dict(requests.get(f"{gateway.url}/v1/async-tasks/{task_id}", timeout=10).json())

    failed = wait_for(
        lambda: (v := view()).get("callback", {}).get("status") == "failed" and v,
        30,
        lambda: f"task: {view()}",
    )
    assert failed["status"] == "SUCCESS"
    assert failed["result"] == {"result": '{"n": 1}'}
    assert failed["callback"]["attempts"] == 1
    assert failed["callback"]["last_status_code"] == 410

    url = f"{gateway.url}/v1/async-tasks/{task_id}/callback/redeliver"
    again = requests.post(url, timeout=10)
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "pending"
    wait_for(lambda: view()["callback"]["status"] == "delivered", 30, lambda: f"task: {view()}")
    assert requests.post(url, timeout=10).status_code == 409
    # model-engine's fields keep their shape; the delivery is a field of its own beside them.
    assert set(failed) - {"callback"} == {"task_id", "status", "result", "traceback", "status_code"}


@pytest.mark.timeout(90)
def test_on_sqs_the_jobs_go_through_the_sibling_queue(
    moto_here: MotoServer, procs: Processes, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    sqs = moto_here.client("sqs")
    queue_url = sqs.create_queue(QueueName="inference")["QueueUrl"]
    jobs_url = sqs.create_queue(QueueName=callbacks_queue("inference"))["QueueUrl"]
    sqs.create_queue(QueueName=parked_queue("inference"))
    moto_here.client("s3").create_bucket(Bucket="results")
    aws_flags = {"--sqs-url": queue_url, "--result-backend": "s3://results/tasks"}
    flags = [item for pair in aws_flags.items() for item in pair]
    config = write_config(
        tmp_path / "callbacks.yaml",
        {"default_url": callback_receiver.url(), "delivery_slots": 2},
    )
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, concurrency=2, env=moto_here.env, extra_args=[*flags, *config]
    )
    client = procs.client(queue="inference", extra_flags=aws_flags)
    task_ids = [client.submit({"args": {"n": n}}) for n in range(3)]
    wait_all(client, task_ids, timeout=30)
    calls = callback_receiver.calls_for(task_ids, timeout=30)
    assert calls[task_ids[1]].json() == {
        "result": '{"n": 1}',
        "status_code": 200,
        "task_id": task_ids[1],
    }
    stored = wait_for(
        lambda: (
            (s := states([*flags, "--queue", "inference"]))
            and all(s.get(t, {}).get("status") == "delivered" for t in task_ids)
            and s
        ),
        20,
        "delivery states",
    )
    assert stored[task_ids[0]]["attempts"] == 1

    def jobs_left() -> dict[str, str]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        return sqs.get_queue_attributes(QueueUrl=jobs_url, AttributeNames=names)["Attributes"]

    # The jobs came through the sibling queue, and each is deleted once its delivery ended.
    wait_for(lambda: set(jobs_left().values()) == {"0"}, 20, lambda: f"jobs left: {jobs_left()}")
    assert "deliverer started beside the worker" in worker.log()
    assert "delivered after 1 attempt(s)" in worker.log()
