"""The wire protocol, end to end: real Redis, real workers (both pools), the real echo server.

One deployment per pool serves every test in this module: four workers, one per result-shaping
configuration, each on its own queue, started side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from forwarder.client.broker import ForwarderClient
from forwarder.protocol import LEGACY_TASK_NAME, LIRA_TASK_NAME, TASK_NAMES
from support.echo import EchoServer
from support.processes import Processes
from support.redis_server import stored_meta
from support.waiting import wait_for, wait_one
from support.workers import Worker

pytestmark = [pytest.mark.integration]

PAYLOAD = {"args": {"x": 1, "y": [1, 2]}}
AS_STRING = {"result": json.dumps({"x": 1, "y": [1, 2]}), "status_code": 200}
AS_OBJECT = {"result": {"x": 1, "y": [1, 2]}, "status_code": 200}
WHOLE_PAYLOAD = {"result": json.dumps(PAYLOAD), "status_code": 200}

# variant -> (--set overrides, environment, expected result for PAYLOAD)
VARIANTS: dict[str, tuple[list[str], dict[str, str], dict[str, Any]]] = {
    "default": ([], {}, AS_STRING),
    "set-serialize-false": (["forwarder.async.serialize_results_as_string=false"], {}, AS_OBJECT),
    "env-serialize-false": ([], {"SERIALIZE_RESULTS_AS_STRING": "false"}, AS_OBJECT),
    "unwrap-false": (["forwarder.async.model_engine_unwrap=false"], {}, WHOLE_PAYLOAD),
}


@dataclass
class Deployment:
    pool: str
    redis_url: str
    echo: EchoServer
    workers: dict[str, Worker]
    clients: dict[str, ForwarderClient]
    queues: dict[str, str]


@pytest.fixture(scope="module", params=["prefork", "gevent"])
def deployment(
    request: pytest.FixtureRequest, module_procs: Processes, module_redis_url: str
) -> Iterator[Deployment]:
    pool = request.param
    echo = module_procs.echo()
    queues = {variant: f"{pool}-{variant}" for variant in VARIANTS}
    workers = {
        variant: module_procs.worker(
            model_port=echo.port,
            # One worker selects its pool through the environment rather than --pool.
            pool=None if variant == "env-serialize-false" else pool,
            queue=queues[variant],
            broker_url=module_redis_url,
            concurrency=2,
            sets=sets,
            env={**env, "CELERY_WORKER_POOL": pool} if variant == "env-serialize-false" else env,
            wait=False,
        )
        for variant, (sets, env, _) in VARIANTS.items()
    }
    for worker in workers.values():
        worker.wait_ready()
        assert f"concurrency: 2 ({pool})" in worker.log()
    clients = {
        variant: module_procs.client(broker_url=module_redis_url, queue=queues[variant])
        for variant in VARIANTS
    }
    yield Deployment(pool, module_redis_url, echo, workers, clients, queues)
    for worker in workers.values():
        worker.cleanup()
    echo.kill()


@pytest.mark.timeout(10)
def test_task_names_are_model_engines() -> None:
    assert LIRA_TASK_NAME == "ml_serve.celery_service.exec_func"
    assert LEGACY_TASK_NAME == "hosted_model_inference.inference.async_inference.tasks.predict"
    assert TASK_NAMES == (LIRA_TASK_NAME, LEGACY_TASK_NAME)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("task_name", TASK_NAMES, ids=["lira", "legacy"])
def test_success_result_is_exactly_the_contract(deployment: Deployment, task_name: str) -> None:
    ids = {
        variant: client.submit(PAYLOAD, task_name=task_name)
        for variant, client in deployment.clients.items()
    }
    got = {
        variant: (result.status, result.result, result.status_code)
        for variant, result in (
            (v, wait_one(deployment.clients[v], task_id)) for v, task_id in ids.items()
        )
    }
    expected = {variant: ("SUCCESS", want, 200) for variant, (_, _, want) in VARIANTS.items()}
    assert got == expected
    # Celery's own stored meta says the same (no reshaping on the client side).
    for variant, task_id in ids.items():
        meta = stored_meta(deployment.redis_url, task_id)
        assert meta is not None
        assert (meta["status"], meta["result"]) == ("SUCCESS", VARIANTS[variant][2])


@pytest.mark.timeout(90)
def test_non_2xx_reply_is_a_success_with_its_status_code(deployment: Deployment) -> None:
    client = deployment.clients["default"]
    task_id = client.submit({"args": {"status_code": 503}})
    result = wait_one(client, task_id)
    assert result.status == "SUCCESS", result
    assert result.result == {"result": json.dumps({"status_code": 503}), "status_code": 503}
    assert result.status_code == 503


@pytest.mark.timeout(90)
def test_non_json_reply_fails_only_that_task(deployment: Deployment) -> None:
    client = deployment.clients["default"]
    failing = client.submit({"args": {"raw_text": "this is not json"}})
    result = wait_one(client, failing)
    assert result.status == "FAILURE", result
    assert result.result is None
    assert result.error is not None and "JSON" in result.error, result.error
    assert "this is not json" in result.error

    meta = stored_meta(deployment.redis_url, failing)
    assert meta is not None and meta["status"] == "FAILURE", meta
    stored = meta["result"]
    assert stored["exc_type"] == "ModelResponseError", stored
    assert "JSON" in " ".join(stored["exc_message"]), stored
    custom = json.loads(stored["custom"])
    assert set(custom) == {"error", "error_metadata"}, custom
    assert "JSON" in custom["error"]
    assert custom["error_metadata"].startswith("Internal failure\n"), custom["error_metadata"]
    assert "ModelResponseError" in custom["error_metadata"]

    following = client.submit(PAYLOAD)
    after = wait_one(client, following)
    assert (after.status, after.result) == ("SUCCESS", AS_STRING)
    assert deployment.workers["default"].running


@pytest.mark.timeout(90)
def test_payload_that_is_not_an_object_fails_only_that_task(deployment: Deployment) -> None:
    client = deployment.clients["default"]
    sent = client.app.send_task(
        LIRA_TASK_NAME,
        args=[["not", "an", "object"], datetime.now()],
        queue=deployment.queues["default"],
    )
    failed = wait_one(client, sent.id)
    assert failed.status == "FAILURE", failed
    assert failed.error is not None and "payload must be a JSON object" in failed.error
    meta = stored_meta(deployment.redis_url, sent.id)
    assert meta is not None and meta["result"]["exc_type"] == "PayloadError", meta
    following = wait_one(client, client.submit(PAYLOAD))
    assert (following.status, following.result) == ("SUCCESS", AS_STRING)


@pytest.mark.timeout(90)
def test_extra_args_and_unknown_kwargs_are_ignored_with_a_warning(deployment: Deployment) -> None:
    client = deployment.clients["default"]
    sent = client.app.send_task(
        LIRA_TASK_NAME,
        args=[PAYLOAD, datetime.now(), "extra"],
        kwargs={"unknown": 1},
        queue=deployment.queues["default"],
    )
    result = wait_one(client, sent.id)
    assert (result.status, result.result) == ("SUCCESS", AS_STRING), result
    worker = deployment.workers["default"]
    wait_for(
        lambda: f"task {sent.id}: ignoring 1 extra positional argument(s)" in worker.log(),
        5,
        "no warning about the extra positional argument in the worker log",
    )
    wait_for(
        lambda: f"task {sent.id}: ignoring keyword argument(s) ['unknown']" in worker.log(),
        5,
        "no warning about the unknown keyword argument in the worker log",
    )
    warnings = [line for line in worker.log().splitlines() if f"task {sent.id}: ignoring" in line]
    assert len(warnings) == 2, warnings
    assert all("WARNING" in line for line in warnings), warnings


PLAIN_CLIENT = """
import json, sys
from datetime import datetime
from celery import Celery

url, queue = sys.argv[1], sys.argv[2]
app = Celery("plain-client", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
)
ok = app.send_task(
    "ml_serve.celery_service.exec_func",
    args=[{"args": {"x": 1, "y": [1, 2]}}, datetime.now()],
    queue=queue,
)
value = app.AsyncResult(ok.id).get(timeout=15)
bad = app.send_task(
    "hosted_model_inference.inference.async_inference.tasks.predict",
    args=[{"args": {"raw_text": "<html>oops</html>"}}, datetime.now()],
    queue=queue,
)
outcome = app.AsyncResult(bad.id).get(timeout=15, propagate=False)
print(json.dumps({
    "value": value,
    "ok_state": app.AsyncResult(ok.id).state,
    "bad_state": app.AsyncResult(bad.id).state,
    "bad_is_exception": isinstance(outcome, Exception),
    "bad_type": type(outcome).__name__,
    "bad_message": str(outcome),
    "forwarder_imported": sorted(m for m in sys.modules if m.split(".")[0] == "forwarder"),
}))
app.close()
"""


@pytest.mark.timeout(90)
def test_plain_celery_client_reads_the_contract(deployment: Deployment, tmp_path: Path) -> None:
    # What an existing model-engine gateway does: Celery alone, in a process without forwarder.
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_CLIENT, deployment.redis_url, deployment.queues["default"]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forwarder_imported"] == []
    assert report["value"] == {"result": '{"x": 1, "y": [1, 2]}', "status_code": 200}
    assert report["ok_state"] == "SUCCESS"
    assert report["bad_state"] == "FAILURE"
    assert report["bad_is_exception"] is True
    assert report["bad_type"] == "ModelResponseError"
    assert "JSON" in report["bad_message"], report
