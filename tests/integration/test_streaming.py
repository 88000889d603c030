"""A task streamed from a real SSE model server (FastAPI's StreamingResponse under uvicorn), in
both pools: its event log read live, mid-stream and after a reconnect, each event exactly once
and in order, the stored result the assembled stream; cancel and deadline stop the stream and
end the log with their state. Redis Streams and the embedded default's files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from forwarder.client.broker import ForwarderClient
from forwarder.client.gateway import GatewayClient
from forwarder.devtools.localrun import Child, environment
from forwarder.events import Event
from forwarder.events.redis import RedisEventLog
from forwarder.events.sse import sse_fields
from forwarder.protocol import events_key_name
from support.aws import MotoServer
from support.processes import Processes
from support.waiting import wait_for

pytestmark = [pytest.mark.integration]

POOLS = ["prefork", "gevent"]
SERVER = Path(__file__).with_name("sse_model_server.py")
CHAT_ROUTES = [
    "forwarder.async.predict_route=/v1/chat/completions",
    "forwarder.async.healthcheck_route=/health",
]


@pytest.fixture
def sse_port(tmp_path: Path) -> Iterator[int]:
    child = Child([sys.executable, str(SERVER)], tmp_path / "sse.log")
    try:
        match = child.wait_for(r"listening on http://127\.0\.0\.1:(\d+)", timeout=30)
        yield int(match.group(1))
    except RuntimeError as exc:
        pytest.fail(f"SSE model server did not start: {exc}")
    finally:
        child.kill()


def expected_chat(tokens: int) -> dict[str, Any]:
    text = "".join(f"tok{n} " for n in range(tokens))
    usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
    return {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "streamer",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }


def read_in_thread(client: ForwarderClient, task_id: str) -> tuple[threading.Thread, list[Event]]:
    seen: list[Event] = []

    def read() -> None:
        seen.extend(client.events(task_id, timeout=60))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, seen


def read_with_a_reconnect(client: ForwarderClient, task_id: str, first: int) -> list[Event]:
    """``first`` events, then a new reader from the last one's id (as Last-Event-ID resumes)."""
    seen: list[Event] = []
    reader = client.events(task_id, timeout=60)
    for event in reader:
        seen.append(event)
        if len(seen) == first:
            break
    reader.close()
    seen.extend(client.events(task_id, after=seen[-1].id, timeout=60))
    return seen


def check_log(events: list[Event], tokens: int, status: str) -> list[str]:
    """The log's chunk texts; fails unless ids are unique and it ends with ``status``."""
    ids = [event.id for event in events]
    assert len(set(ids)) == len(ids), ids
    assert [e.kind for e in events].count("state") == 1 and events[-1].kind == "state"
    assert json.loads(events[-1].data)["status"] == status, events[-1]
    chunks = [json.loads(e.data) for e in events if e.kind == "chunk"]
    return [c["choices"][0]["delta"].get("content", "") for c in chunks]


def streaming_worker(procs: Processes, port: int, pool: str, **options: Any) -> ForwarderClient:
    procs.worker(model_port=port, pool=pool, queue="stream", sets=CHAT_ROUTES, **options)
    flags = {k: v for k, v in options.items() if k in ("broker_url", "data_dir")}
    return procs.client(queue="stream", **flags)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_readers_mid_stream_and_after_a_reconnect_see_every_event_once(
    pool: str, procs: Processes, redis_url: str, sse_port: int
) -> None:
    client = streaming_worker(procs, sse_port, pool, broker_url=redis_url)
    tokens = 40
    task_id = client.submit({"args": {"tokens": tokens, "delay": 0.05}})
    log = client.events(task_id, timeout=30)
    first = next(log)  # the stream has begun: both readers attach mid-stream
    log.close()
    assert first.kind == "chunk"
    thread, live = read_in_thread(client, task_id)
    resumed = read_with_a_reconnect(client, task_id, first=7)
    thread.join(60)

    assert [e.id for e in live] == [e.id for e in resumed]
    assert live == resumed
    texts = check_log(live, tokens, "SUCCESS")
    assert texts == [f"tok{n} " for n in range(tokens)] + [""]
    progress = [json.loads(e.data) for e in live if e.kind == "progress"]
    assert progress == [{"done": n} for n in (10, 20, 30)]
    result = client.wait(task_id, timeout=10)
    assert result.result == {"result": json.dumps(expected_chat(tokens)), "status_code": 200}
    # A reader that comes after the end reads the same whole log.
    assert list(client.events(task_id, timeout=10)) == live


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_a_deadline_and_a_cancel_stop_the_stream_and_end_the_log(
    pool: str, procs: Processes, redis_url: str, sse_port: int
) -> None:
    client = streaming_worker(procs, sse_port, pool, broker_url=redis_url, concurrency=2)
    timed = client.submit({"args": {"tokens": 200, "delay": 0.02}}, timeout_seconds=1.5)
    canceled = client.submit({"args": {"tokens": 200, "delay": 0.02}})
    reader = client.events(canceled, timeout=30)
    for _ in range(5):
        next(reader)
    assert client.cancel(canceled).status in ("STARTED", "CANCELED")

    for task_id, status in ((timed, "TIMEOUT"), (canceled, "CANCELED")):
        assert client.wait(task_id, timeout=20).status == status
        events = list(client.events(task_id, timeout=20))
        texts = check_log(events, 200, status)
        assert 5 <= len(texts) < 200, f"{task_id}: {len(texts)} chunks"
        assert texts == [f"tok{n} " for n in range(len(texts))]
    rest = list(reader)
    assert json.loads(rest[-1].data)["status"] == "CANCELED"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", POOLS)
def test_the_embedded_default_keeps_the_log_in_files(
    pool: str, procs: Processes, tmp_path: Path, sse_port: int
) -> None:
    data_dir = tmp_path / "data"
    client = streaming_worker(procs, sse_port, pool, data_dir=data_dir)
    task_id = client.submit({"args": {"tokens": 30, "delay": 0.03}})
    wait_for(lambda: client.get(task_id).status == "STARTED", 20, "not started")
    resumed = read_with_a_reconnect(client, task_id, first=4)
    assert [e.id for e in resumed] == [str(n) for n in range(1, len(resumed) + 1)]
    assert check_log(resumed, 30, "SUCCESS") == [f"tok{n} " for n in range(30)] + [""]
    stored = client.wait(task_id, timeout=10).result
    assert stored == {"result": json.dumps(expected_chat(30)), "status_code": 200}
    assert list(client.events(task_id, timeout=10)) == resumed


TOKEN = "stream-token-0123456789abcdef"


def raw_sse(url: str, headers: dict[str, str], stop_after: int | None = None) -> list[Event]:
    """Events as an EventSource reads them off the wire, up to ``stop_after`` of them."""
    seen: list[Event] = []
    with requests.get(url, headers=headers, stream=True, timeout=(5, 30)) as reply:
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        for event_id, kind, data in sse_fields(reply.iter_content(None)):
            seen.append(Event(event_id or "", kind, data))
            if kind == "state" or len(seen) == stop_after:
                break
    return seen


@pytest.mark.timeout(120)
def test_the_gateway_serves_the_log_as_sse_resumable_with_last_event_id(
    procs: Processes, redis_url: str, sse_port: int, tmp_path: Path
) -> None:
    client = streaming_worker(procs, sse_port, "gevent", broker_url=redis_url)
    gateway = procs.gateway(
        broker_url=redis_url, queue="stream", env={"FORWARDER_GATEWAY_TOKENS": TOKEN}
    )
    remote = GatewayClient(gateway.url, TOKEN)
    task_id = remote.submit({"args": {"tokens": 30, "delay": 0.05}})
    url = f"{gateway.url}/v1/async-tasks/{task_id}/events"
    assert requests.get(url, timeout=10).status_code == 401

    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad_id = requests.get(f"{gateway.url}/v1/async-tasks/a%20b/events", headers=auth, timeout=10)
    assert bad_id.status_code == 422, bad_id.text
    first = raw_sse(url, auth, stop_after=5)
    rest = raw_sse(url, {**auth, "Last-Event-ID": first[-1].id})
    resumed = first + rest
    texts = check_log(resumed, 30, "SUCCESS")
    assert texts == [f"tok{n} " for n in range(30)] + [""]
    assert list(remote.events(task_id, timeout=30)) == resumed
    assert list(client.events(task_id, timeout=30)) == resumed
    stored = remote.get(task_id).result
    assert stored == {"result": json.dumps(expected_chat(30)), "status_code": 200}

    watched = subprocess.run(
        [sys.executable, "-m", "forwarder", "watch", task_id, "--gateway-url", gateway.url],
        env=environment({"FORWARDER_GATEWAY_TOKEN": TOKEN}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watched.returncode == 0, watched.stderr
    printed = [json.loads(line) for line in watched.stdout.splitlines()]
    assert printed == [event.as_dict() for event in resumed]
    assert TOKEN not in watched.stdout + watched.stderr


@pytest.mark.timeout(120)
def test_s3_results_keep_the_log_in_batched_objects(
    moto_here: MotoServer, procs: Processes, sse_port: int
) -> None:
    moto = moto_here
    queue_url = moto.client("sqs").create_queue(QueueName="stream")["QueueUrl"]
    moto.client("s3").create_bucket(Bucket="results")
    flags = {"--sqs-url": queue_url, "--result-backend": "s3://results/tasks"}
    procs.worker(
        model_port=sse_port,
        pool="gevent",
        queue="stream",
        sets=CHAT_ROUTES,
        env=moto.env,
        extra_args=[item for pair in flags.items() for item in pair],
    )
    client = procs.client(queue="stream", extra_flags=flags)
    task_id = client.submit({"args": {"tokens": 40, "delay": 0.05}})
    resumed = read_with_a_reconnect(client, task_id, first=3)
    assert [e.id for e in resumed] == [str(n) for n in range(1, len(resumed) + 1)]
    assert check_log(resumed, 40, "SUCCESS") == [f"tok{n} " for n in range(40)] + [""]
    stored = client.wait(task_id, timeout=10).result
    assert stored == {"result": json.dumps(expected_chat(40)), "status_code": 200}
    listed = moto.client("s3").list_objects_v2(
        Bucket="results", Prefix=f"tasks/forwarder-events-{task_id}/"
    )
    objects = len(listed["Contents"])
    # About one object per half second of a two-second stream, never one per event.
    assert 2 <= objects <= 15, objects


def test_a_redis_event_write_sent_again_adds_nothing_twice(redis_url: str) -> None:
    # A deadline that fires while a write's reply is awaited keeps the events for the next write
    # (they may already be in the stream); the next write sends them again with what followed.
    with redis.Redis.from_url(redis_url, socket_timeout=5) as conn:
        log = RedisEventLog(types.SimpleNamespace(client=conn, expires=60))
        first = [("chunk", '"a"'), ("chunk", '"b"')]
        log._write("resent", first, 1)
        log._write("resent", [*first, ("chunk", '"c"')], 1)
        again = log.writer("resent")  # another delivery numbers on after the log it finds
        again.add("chunk", '"d"')
        again.finish("SUCCESS", None)
        assert [e.data for e in log.read("resent")] == [
            '"a"',
            '"b"',
            '"c"',
            '"d"',
            '{"status": "SUCCESS", "error": null}',
        ]
        assert 0 < conn.ttl(events_key_name("resent")) <= 60
