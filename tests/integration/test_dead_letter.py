"""The crash-loop cap with real workers on Redis: a task that kills its worker is dead-lettered.

The poison is a slow model call (the echo server's ``delay``) that the test kills in the middle:
under prefork the child running it (SIGKILL; the parent requeues the task at once), under gevent
the whole worker, which is then started again. A dead worker's unacknowledged message comes back
only after the visibility timeout (a minute at least); the test stands in for that wait by
backdating the message's entry in kombu's unacked index, which the next worker's first sweep then
restores.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import redis

from forwarder.client.broker import ForwarderClient
from forwarder.client.dead_letters import decode
from support.aws import MotoServer
from support.echo import EchoServer
from support.env import base_env
from support.processes import Processes
from support.waiting import wait_all, wait_for, wait_one
from support.workers import Worker

pytestmark = [pytest.mark.integration]

MAX_DELIVERIES = 2
POISON = {"args": {"delay": 3}}


Read = Callable[[str], bytes | None]


def redis_reader(redis_url: str) -> Read:
    def read(key: str) -> bytes | None:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as conn:
            value = conn.get(key)
        return None if value is None else bytes(value)

    return read


def count(read: Read, task_id: str) -> int:
    return int(read(f"forwarder-deliveries-{task_id}-0") or 0)


def kill_deliveries(
    read: Read, echo: EchoServer, submit: Callable[[], str], kill: Callable[[int], None]
) -> str:
    """Send the task with ``submit``; kill whatever runs each of its first MAX_DELIVERIES deliveries,
    mid model call; the task id.

    Only the poison task reaches the echo server meanwhile, so each new request is its next
    delivery's; the pid in its STARTED meta tells which process to kill.
    """
    # Read before the task is sent: a worker may call the model before this process reads on.
    baseline = echo.stats()["predict_requests"]
    task_id = submit()
    killed: set[int] = set()

    def meta() -> dict[str, Any]:
        raw = read(f"celery-task-meta-{task_id}")
        return {} if raw is None else dict(json.loads(raw))

    for delivery in range(1, MAX_DELIVERIES + 1):

        def started(delivery: int = delivery) -> int | None:
            stored = meta()
            if stored.get("status") != "STARTED" or count(read, task_id) != delivery:
                return None
            pid = int(stored["result"]["pid"])
            calls = echo.stats()["predict_requests"] - baseline
            return pid if pid not in killed and calls == delivery else None

        pid = wait_for(started, 20, lambda: f"a delivery never ran: {meta()}")
        killed.add(pid)
        kill(pid)
    return task_id


def backdate_unacked(redis_url: str) -> None:
    """As if the visibility timeout had passed for every message a dead worker held."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as conn:
        tags = conn.zrange("unacked_index", 0, -1)
        if tags:
            conn.zadd("unacked_index", dict.fromkeys(tags, 0))


def dead_letter_cli(redis_url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--broker-url", redis_url, "--queue", queue]
    return subprocess.run(
        [sys.executable, "-m", "forwarder", "dead-letter", *args, *flags],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_dead_lettered(client: ForwarderClient, task_id: str, redis_url: str, queue: str) -> None:
    result = client.get(task_id)
    assert result.status == "FAILURE", result
    assert f"dead-lettered after {MAX_DELIVERIES} deliveries" in (result.error or ""), result
    assert f"copied to {queue}-dead-letter" in (result.error or ""), result
    listed = dead_letter_cli(redis_url, queue, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert all("task_id" in line for line in lines), lines
    assert [(line["task_id"], line["deliveries"], line["queue"]) for line in lines] == [
        (task_id, MAX_DELIVERIES, queue)
    ]
    # No user data unless asked for.
    assert lines[0]["payload_keys"] == ["args"] and "args" not in lines[0]


@pytest.mark.timeout(60)
def test_prefork_child_killed_every_time_is_dead_lettered_then_replayed(
    procs: Processes, redis_url: str
) -> None:
    queue = "poison-prefork"
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool="prefork",
        queue=queue,
        broker_url=redis_url,
        concurrency=2,
        extra_args=["--max-deliveries", str(MAX_DELIVERIES)],
    )
    client = procs.client(broker_url=redis_url, queue=queue)
    others = [client.submit({"args": {"n": n}}) for n in range(2)]
    wait_all(client, others, timeout=20)

    def kill_child(pid: int) -> None:
        assert pid in {child.pid for child in worker.children()}
        psutil.Process(pid).kill()

    poison = kill_deliveries(
        redis_reader(redis_url), echo, lambda: client.submit(POISON), kill_child
    )
    assert wait_one(client, poison, timeout=20).status == "FAILURE"
    others += [client.submit({"args": {"n": n}}) for n in range(2, 4)]
    results = wait_all(client, others, timeout=20)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    # Forwarded exactly MAX_DELIVERIES times; the delivery after them was not.
    assert echo.stats()["predict_requests"] == MAX_DELIVERIES + len(others)
    assert_dead_lettered(client, poison, redis_url, queue)

    # The poison condition gone (nothing kills it now), a replay runs it to the end.
    replayed = dead_letter_cli(redis_url, queue, "replay", poison)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"task_id": poison, "queue": queue, "replayed": True}
    assert dead_letter_cli(redis_url, queue, "list").stdout == ""
    result = wait_one(client, poison, timeout=20)
    assert result.status == "SUCCESS", result
    assert result.result == {"result": '{"delay": 3}', "status_code": 200}
    assert count(redis_reader(redis_url), poison) == 1
    assert worker.running


@pytest.mark.timeout(90)
def test_gevent_worker_killed_every_time_is_dead_lettered(procs: Processes, redis_url: str) -> None:
    queue = "poison-gevent"
    echo = procs.echo()
    client = procs.client(broker_url=redis_url, queue=queue)

    def start() -> Worker:
        return procs.worker(
            model_port=echo.port,
            pool="gevent",
            queue=queue,
            broker_url=redis_url,
            concurrency=2,
            extra_args=["--max-deliveries", str(MAX_DELIVERIES)],
        )

    workers = [start()]
    others = [client.submit({"args": {"n": n}}) for n in range(2)]
    wait_all(client, others, timeout=20)

    def kill_worker(pid: int) -> None:
        assert pid == workers[-1].pid
        workers[-1].child.kill()
        backdate_unacked(redis_url)
        workers.append(start())

    poison = kill_deliveries(
        redis_reader(redis_url), echo, lambda: client.submit(POISON), kill_worker
    )
    worker = workers[-1]
    others += [client.submit({"args": {"n": n}}) for n in range(2, 4)]
    assert wait_one(client, poison, timeout=20).status == "FAILURE"
    results = wait_all(client, others, timeout=20)
    assert {r.status for r in results.values()} == {"SUCCESS"}
    assert echo.stats()["predict_requests"] == MAX_DELIVERIES + len(others)
    assert_dead_lettered(client, poison, redis_url, queue)
    assert worker.running


@pytest.mark.timeout(60)
def test_sqs_with_s3_results_dead_letters_to_a_sibling_queue(
    procs: Processes, moto_here: MotoServer
) -> None:
    """The count's read-modify-write on S3; the copy goes to the SQS queue named after ours."""
    moto = moto_here
    queue = "poison-sqs"
    sqs, s3 = moto.client("sqs"), moto.client("s3")
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    dead_url = sqs.create_queue(QueueName=f"{queue}-dead-letter")["QueueUrl"]
    s3.create_bucket(Bucket="results")
    flags = {"--sqs-url": queue_url, "--result-backend": "s3://results/tasks"}
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool="prefork",
        queue=queue,
        concurrency=2,
        env=moto.env,
        extra_args=[*(item for pair in flags.items() for item in pair), "--max-deliveries", "2"],
    )
    client = procs.client(queue=queue, extra_flags=flags)

    def read(key: str) -> bytes | None:
        try:
            return bytes(s3.get_object(Bucket="results", Key=f"tasks/{key}")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    poison = kill_deliveries(
        read, echo, lambda: client.submit(POISON), lambda pid: psutil.Process(pid).kill()
    )
    result = wait_one(client, poison, timeout=30)
    assert result.status == "FAILURE", result
    assert f"copied to {queue}-dead-letter" in (result.error or ""), result
    assert echo.stats()["predict_requests"] == MAX_DELIVERIES
    [message] = sqs.receive_message(QueueUrl=dead_url, WaitTimeSeconds=1)["Messages"]
    letter = decode(base64.b64decode(message["Body"]), None).letter
    assert letter is not None
    assert (letter.task_id, letter.queue, letter.deliveries) == (poison, queue, MAX_DELIVERIES)
    assert worker.running
