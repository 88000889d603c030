"""The route settings of docs/model-servers.md against a server with the routes real ones serve
(tests/integration/model_server_routes.py): the V2 protocol of MLServer and Triton, OpenAI's of
vLLM; a plain-text 500 fails that one task; a model that never becomes ready stops the worker
with exit status 1."""

from __future__ import annotations

import json
import re
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.localrun import Child
from support.processes import Processes
from support.redis_server import stored_meta
from support.waiting import wait_one

pytestmark = [pytest.mark.integration]

SERVER = Path(__file__).with_name("model_server_routes.py")
MODEL = "doubler"
V2_ROUTES = [
    f"forwarder.async.predict_route=/v2/models/{MODEL}/infer",
    f"forwarder.async.healthcheck_route=/v2/models/{MODEL}/ready",
]


class ModelServer:
    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port

    def post(self, route: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{route}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[Callable[..., ModelServer]]:
    started: list[Child] = []

    def start(*args: str) -> ModelServer:
        child = Child([sys.executable, str(SERVER), "--model", MODEL, *args], tmp_path / "m.log")
        started.append(child)
        try:
            match = child.wait_for(r"listening on http://127\.0\.0\.1:(\d+)", timeout=30)
        except RuntimeError as exc:
            pytest.fail(f"model server did not start: {exc}")
        return ModelServer(child, int(match.group(1)))

    try:
        yield start
    finally:
        for child in started:
            child.stop(signal.SIGTERM, timeout=10)


def _v2_request(name: str, data: list[float]) -> dict[str, Any]:
    tensor = {"name": name, "shape": [len(data)], "datatype": "FP32", "data": data}
    return {"args": {"inputs": [tensor]}}


@pytest.mark.timeout(90)
def test_a_v2_server_a_plain_text_500_and_an_unloaded_model(
    procs: Processes, redis_url: str, model_server: Callable[..., ModelServer]
) -> None:
    server = model_server()
    procs.worker(model_port=server.port, queue="v2", broker_url=redis_url, sets=V2_ROUTES)
    client = procs.client(broker_url=redis_url, queue="v2")

    first = wait_one(client, client.submit(_v2_request("x", [1.0, 2.5])))
    assert first.status == "SUCCESS", first
    assert first.result["status_code"] == 200
    assert json.loads(first.result["result"])["outputs"][0]["data"] == [2.0, 5.0]

    crashed = wait_one(client, client.submit(_v2_request("crash", [1.0])))
    assert crashed.status == "FAILURE", crashed
    assert "replied HTTP 500 with a body that is not JSON" in crashed.error
    assert "text/plain" in crashed.error and "'Internal Server Error'" in crashed.error
    meta = stored_meta(redis_url, crashed.task_id)
    assert meta["result"]["exc_type"] == "ModelResponseError", meta

    # The worker goes on; once the model is unloaded its replies are the server's JSON 404.
    after = wait_one(client, client.submit(_v2_request("x", [3.0])))
    assert after.status == "SUCCESS", after
    assert server.post(f"/v2/repository/models/{MODEL}/unload") == 200
    unloaded = wait_one(client, client.submit(_v2_request("x", [3.0])))
    assert unloaded.status == "SUCCESS", unloaded
    assert unloaded.result["status_code"] == 404
    assert json.loads(unloaded.result["result"]) == {"error": f"Model {MODEL} not found"}


@pytest.mark.timeout(90)
def test_a_model_never_ready_stops_the_worker_with_status_1_though_the_server_is_ready(
    procs: Processes, redis_url: str, model_server: Callable[..., ModelServer]
) -> None:
    server = model_server("--unloaded")
    worker = procs.worker(
        model_port=server.port,
        queue="v2-unloaded",
        broker_url=redis_url,
        sets=[*V2_ROUTES, "worker.readiness_timeout_seconds=2"],
        wait=False,
    )
    try:
        status = worker.child.process.wait(timeout=30)
    except Exception:
        pytest.fail(f"the worker was still waiting after 30 s:\n{worker.log()}")
    assert status == 1, worker.log()
    url = f"http://127.0.0.1:{server.port}/v2/models/{MODEL}/ready"
    assert f"forwarder: model server at {url} not ready after 2 s (last: HTTP 404)" in worker.log()
    assert not re.search(r"celery@\S+ ready\.", worker.log()), "it consumed"

    # The server's own readiness route answers 200 all along: a worker probing it consumes.
    procs.worker(
        model_port=server.port,
        queue="v2-unloaded",
        broker_url=redis_url,
        sets=[V2_ROUTES[0], "forwarder.async.healthcheck_route=/v2/health/ready"],
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("route", "args", "text"),
    [
        ("/v1/completions", {"prompt": "abc", "max_tokens": 3}, "cba"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "abc"}]}, "cba"),
    ],
)
def test_openai_compatible_routes(
    route: str,
    args: dict[str, Any],
    text: str,
    procs: Processes,
    redis_url: str,
    model_server: Callable[..., ModelServer],
) -> None:
    server = model_server()
    sets = [f"forwarder.async.predict_route={route}", "forwarder.async.healthcheck_route=/health"]
    procs.worker(model_port=server.port, queue="openai", broker_url=redis_url, sets=sets)
    client = procs.client(broker_url=redis_url, queue="openai")
    done = wait_one(client, client.submit({"args": {"model": MODEL, **args}}))
    assert done.status == "SUCCESS", done
    (choice,) = json.loads(done.result["result"])["choices"]
    assert choice.get("text", choice.get("message", {}).get("content")) == text
