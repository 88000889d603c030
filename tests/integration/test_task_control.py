"""Queue TTL, execution deadline and cancellation with real workers in both pools.

Redis throughout; the embedded broker and SQS with S3 results (on moto) for the same paths in
short. Each worker has one slot, so a slow task keeps the next ones queued. The echo server counts
the requests that reached it: a task that expired or was canceled in the queue never adds one. A
callback receiver shows that the hooks run once for every final state, the new ones included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml

from forwarder.client.broker import ForwarderClient
from forwarder.protocol import LIRA_TASK_NAME
from support.aws import MotoServer
from support.callbacks import CallbackReceiver
from support.echo import EchoServer
from support.processes import Processes
from support.redis_server import stored_meta
from support.waiting import wait_for

pytestmark = [pytest.mark.integration]

POOLS = ["prefork", "gevent"]


def hooks_config(tmp_path: Path, receiver: CallbackReceiver) -> list[str]:
    path = tmp_path / "hooks.yaml"
    path.write_text(
        yaml.safe_dump({"hooks": ["callback"], "callback": {"default_url": receiver.url()}})
    )
    return ["--config", str(path)]


def unacked(redis_url: str) -> int:
    """Messages a worker has taken from Redis and not acknowledged (kombu keeps them here)."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as conn:
        return int(conn.hlen("unacked"))


def wait_all_acked(redis_url: str) -> None:
    """A late ack follows the stored result, so a test that has just read the result waits for it."""
    wait_for(lambda: unacked(redis_url) == 0, 5, lambda: f"{unacked(redis_url)} still unacked")


def wait_started(client: ForwarderClient, echo: EchoServer, task_id: str) -> None:
    wait_for(
        lambda: client.get(task_id).status == "STARTED" and echo.stats()["in_flight"] == 1,
        10,
        lambda: f"{task_id} not running: {client.get(task_id)}, {echo.stats()}",
    )


def callbacks(receiver: CallbackReceiver, count: int) -> dict[str, Any]:
    """The callback bodies by task id, once ``count`` have come; fails if any came twice."""
    wait_for(
        lambda: len(receiver.received) >= count,
        10,
        lambda: f"{len(receiver.received)} of {count} callbacks",
    )
    time.sleep(0.3)  # a second callback for the same task would come now
    bodies = [json.loads(r.body) for r in receiver.received]
    assert len(bodies) == count, bodies
    return {body["task_id"]: body for body in bodies}


def closed_by_the_worker(echo: EchoServer) -> bool:
    """The echo server holds a connection its peer has closed: an abandoned model call."""
    connections = psutil.Process(echo.child.pid).net_connections(kind="tcp")
    return any(c.status == psutil.CONN_CLOSE_WAIT for c in connections)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", POOLS)
def test_a_model_call_past_its_deadline_ends_timeout_and_the_worker_goes_on(
    pool: str, procs: Processes, redis_url: str
) -> None:
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, pool=pool, queue="deadline", broker_url=redis_url)
    client = procs.client(broker_url=redis_url, queue="deadline")
    slots = {child.pid for child in worker.children()}

    submitted = time.monotonic()
    slow = client.submit({"args": {"delay": 5}}, timeout_seconds=0.5)
    timed_out = client.wait(slow, timeout=5)
    elapsed = time.monotonic() - submitted
    assert timed_out.status == "TIMEOUT", timed_out
    assert elapsed < 1.5, f"TIMEOUT after {elapsed:.2f} s"
    assert timed_out.error == (
        "the model call took longer than its timeout_seconds=0.5; the call was abandoned"
    )
    meta = stored_meta(redis_url, slow)
    assert meta["result"]["exc_type"] == "TaskDeadlineExceeded"
    assert json.loads(meta["result"]["custom"])["error"] == timed_out.error
    wait_for(lambda: closed_by_the_worker(echo), 5, "the worker kept the connection")

    # A deadline that does not pass changes nothing, and leaves nothing armed behind it.
    quick = client.submit({"args": {"n": 1}}, timeout_seconds=0.3)
    assert client.wait(quick, timeout=10).status == "SUCCESS"
    time.sleep(0.5)
    after = client.submit({"args": {"n": 2}})
    assert client.wait(after, timeout=10).result == {"result": '{"n": 2}', "status_code": 200}

    # A bad limit sent by another client fails that task alone, with a readable message.
    bad = client.app.send_task(
        LIRA_TASK_NAME, args=[{"args": {}}, None], kwargs={"timeout_seconds": -1}, queue="deadline"
    ).id
    failed = client.wait(bad, timeout=10)
    assert failed.status == "FAILURE", failed
    assert failed.error == "timeout_seconds must be a positive number of seconds, got -1"

    assert echo.stats()["predict_requests"] == 3, "the timed-out call was tried again"
    wait_all_acked(redis_url)
    assert "retry" not in worker.log()
    assert {child.pid for child in worker.children()} == slots, "a pool process was replaced"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", POOLS)
def test_cancel_a_queued_and_a_running_task(
    pool: str, procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="cancel",
        broker_url=redis_url,
        extra_args=hooks_config(tmp_path, callback_receiver),
    )
    client = procs.client(broker_url=redis_url, queue="cancel")
    running = client.submit({"args": {"delay": 5}})
    wait_started(client, echo, running)
    queued = client.submit({"args": {"n": "queued"}})

    first = client.cancel(queued)
    assert first.status == "CANCELED", first
    assert first.error == "canceled before it started; not forwarded to the model server"
    assert client.cancel(queued) == first

    canceled_at = time.monotonic()
    assert client.cancel(running).status in ("STARTED", "CANCELED")
    ended = client.wait(running, timeout=5)
    elapsed = time.monotonic() - canceled_at
    assert ended.status == "CANCELED", ended
    assert ended.error == "canceled during its model call; the call was abandoned"
    assert elapsed < 1.5, f"CANCELED {elapsed:.2f} s after the cancel"
    assert client.cancel(running) == ended
    wait_for(lambda: closed_by_the_worker(echo), 5, "the worker kept the connection")

    # The slot is free again: the canceled queued task is taken and dropped, the next one runs.
    following = client.submit({"args": {"n": "next"}})
    done = client.wait(following, timeout=10)
    assert done.status == "SUCCESS", done
    assert client.cancel(following) == done
    assert client.get(queued) == first

    assert echo.stats()["predict_requests"] == 2, "the canceled queued task reached the model"
    wait_all_acked(redis_url)
    bodies = callbacks(callback_receiver, 3)
    assert bodies[queued] == {
        "task_id": queued,
        "status": "CANCELED",
        "error": f"TaskCanceled: {first.error}",
    }
    assert bodies[running]["status"] == "CANCELED"
    assert bodies[following]["status_code"] == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", POOLS)
def test_a_task_that_waited_past_its_ttl_expires_unforwarded(
    pool: str, procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="ttl",
        broker_url=redis_url,
        extra_args=hooks_config(tmp_path, callback_receiver),
    )
    client = procs.client(broker_url=redis_url, queue="ttl")
    busy = client.submit({"args": {"delay": 1.5}})
    wait_started(client, echo, busy)
    stale = client.submit({"args": {"n": "stale"}}, ttl_seconds=0.5)
    fresh = client.submit({"args": {"n": "fresh"}}, ttl_seconds=30)

    results = {task_id: client.wait(task_id, timeout=10) for task_id in (busy, stale, fresh)}
    assert [results[t].status for t in (busy, stale, fresh)] == ["SUCCESS", "EXPIRED", "SUCCESS"]
    error = results[stale].error
    assert error is not None
    assert error.startswith("waited "), error
    assert error.endswith("longer than its ttl_seconds=0.5; not forwarded to the model server")
    assert echo.stats()["predict_requests"] == 2, "the expired task reached the model server"
    wait_all_acked(redis_url)
    assert callbacks(callback_receiver, 3)[stale] == {
        "task_id": stale,
        "status": "EXPIRED",
        "error": f"TaskExpired: {error}",
    }


@pytest.mark.timeout(60)
def test_ttl_and_cancel_on_the_embedded_broker(procs: Processes, tmp_path: Path) -> None:
    echo = procs.echo()
    data_dir = tmp_path / "data"
    procs.worker(model_port=echo.port, queue="embedded", data_dir=data_dir)
    client = procs.client(data_dir=data_dir, queue="embedded")
    busy = client.submit({"args": {"delay": 1.5}})
    wait_started(client, echo, busy)
    stale = client.submit({"args": {"n": "stale"}}, ttl_seconds=0.3)
    queued = client.submit({"args": {"n": "queued"}})
    assert client.cancel(queued).status == "CANCELED"
    slow = client.submit({"args": {"delay": 5}})

    assert client.wait(busy, timeout=10).status == "SUCCESS"
    assert client.wait(stale, timeout=10).status == "EXPIRED"
    wait_started(client, echo, slow)
    assert client.get(queued).status == "CANCELED"
    client.cancel(slow)
    assert client.wait(slow, timeout=5).status == "CANCELED"
    # The markers are files beside the results.
    assert (data_dir / "results" / f"forwarder-cancel-{queued}").exists()
    assert echo.stats()["predict_requests"] == 2
    final = client.submit({"args": {"n": "final"}})
    assert client.wait(final, timeout=10).status == "SUCCESS"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_ttl_deadline_and_cancel_on_sqs_with_s3_results(
    pool: str, moto_here: MotoServer, procs: Processes
) -> None:
    moto = moto_here
    queue_url = moto.client("sqs").create_queue(QueueName="limits")["QueueUrl"]
    moto.client("s3").create_bucket(Bucket="results")
    flags = {"--sqs-url": queue_url, "--result-backend": "s3://results/tasks"}
    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="limits",
        env=moto.env,
        extra_args=[item for pair in flags.items() for item in pair],
    )
    client = procs.client(queue="limits", extra_flags=flags)

    # Long enough to be seen running, to submit behind it and to cancel, with moto's S3 and SQS
    # slow under load: at 1.5 s the first read could already find it TIMEOUT.
    busy = client.submit({"args": {"delay": 8}}, timeout_seconds=4)
    wait_started(client, echo, busy)
    stale = client.submit({"args": {"n": "stale"}}, ttl_seconds=0.3)
    queued = client.submit({"args": {"n": "queued"}})
    time.sleep(0.4)
    # The one slot is still taken, so the stale task starts only after its TTL has passed.
    assert client.get(busy).status == "STARTED"
    assert client.cancel(queued).status == "CANCELED"
    assert client.wait(busy, timeout=10).status == "TIMEOUT"
    assert client.wait(stale, timeout=10).status == "EXPIRED"

    running = client.submit({"args": {"delay": 5}})
    wait_started(client, echo, running)
    client.cancel(running)
    assert client.wait(running, timeout=5).status == "CANCELED"
    final = client.submit({"args": {"n": "final"}})
    assert client.wait(final, timeout=15).status == "SUCCESS"
    assert client.get(queued).status == "CANCELED"
    assert echo.stats()["predict_requests"] == 3
