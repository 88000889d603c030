"""The gateway's HTTP API over real HTTP (uvicorn in a thread), with an in-memory task broker.

The broker side (Celery, Redis, the worker) is covered by tests/integration/test_gateway.py; here
the routes, shapes, limits, auth and idempotency are checked against a broker that records what
it is asked.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from openapi_spec_validator import validate

from forwarder.cli import commands as cli
from forwarder.client.broker import TaskResult
from forwarder.client.gateway import GatewayClient
from forwarder.client.idempotency import FileStore
from forwarder.config.settings import load_settings
from forwarder.errors import GatewayError, TaskWaitTimeout
from forwarder.gateway.app import create_app
from forwarder.gateway.models import TaskStatus
from forwarder.gateway.routes import task_view

TOKEN = "tok-0123456789abcdef"
OTHER_TOKEN = "tok-fedcba9876543210"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI reads the process environment: keep the caller's settings out of these tests."""
    for name in list(os.environ):
        if name.startswith(("FORWARDER_", "CELERY_WORKER_", "SERIALIZE_RESULTS")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


class MemoryBroker:
    """Records every call; ``tasks`` holds what ``get`` answers; ``fail`` makes submit raise.

    It keeps the owner records too; a task a test puts in ``tasks`` reads as the anonymous
    caller's.
    """

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.tasks: dict[str, TaskResult] = {}
        self.canceled: list[str] = []
        self.owners: dict[str, str] = {}
        self.fail: Exception | None = None
        self.lock = threading.Lock()

    def record(self, task_id: str, principal: str) -> None:
        self.owners[task_id] = principal

    def owner(self, task_id: str) -> str | None:
        if self.fail is not None:
            raise self.fail
        return self.owners.get(task_id, "anonymous" if task_id in self.tasks else None)

    def submit(
        self,
        payload: dict[str, Any],
        *,
        queue: str | None = None,
        ttl_seconds: float | None = None,
        timeout_seconds: float | None = None,
        task_id: str | None = None,
    ) -> str:
        if self.fail is not None:
            raise self.fail
        assert task_id is not None
        with self.lock:
            self.submitted.append(
                {
                    "payload": payload,
                    "queue": queue,
                    "ttl_seconds": ttl_seconds,
                    "timeout_seconds": timeout_seconds,
                    "task_id": task_id,
                }
            )
        return task_id

    def get(self, task_id: str) -> TaskResult:
        if self.fail is not None:
            raise self.fail
        return self.tasks.get(task_id, TaskResult(task_id=task_id, status="PENDING"))

    def cancel(self, task_id: str) -> TaskResult:
        self.canceled.append(task_id)
        current = self.get(task_id)
        if current.status in ("SUCCESS", "FAILURE", "EXPIRED", "TIMEOUT", "CANCELED"):
            return current
        stopped = TaskResult(task_id=task_id, status="CANCELED", error="TaskCanceled: by request")
        self.tasks[task_id] = stopped
        return stopped

    def close(self) -> None:
        pass


class Served:
    def __init__(self, url: str, broker: MemoryBroker) -> None:
        self.url = url
        self.broker = broker
        self.http = requests.Session()

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=10, **kwargs)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """``serve(*overrides, broker_check=None, embedded=False)``: a gateway on 127.0.0.1.

    It sends to a ``MemoryBroker`` unless ``embedded``: then to the embedded broker in
    ``tmp_path / "data"``, through ``ForwarderClient``.
    """
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(
        *overrides: str, broker_check: Callable[[], None] | None = None, embedded: bool = False
    ) -> Served:
        settings = load_settings(
            env={}, overrides=overrides, flags={"--data-dir": str(tmp_path / "data")}
        )
        broker = MemoryBroker()
        if embedded:  # the real client and store, on the embedded broker in tmp_path/data
            app = create_app(settings)
        else:
            app = create_app(
                settings,
                broker,
                idempotency=FileStore(tmp_path / f"keys-{len(servers)}"),
                owners=broker,
                broker_check=broker_check or (lambda: None),
            )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "gateway did not start within 10 s"
            time.sleep(0.01)
        return Served(f"http://127.0.0.1:{sock.getsockname()[1]}", broker)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------ submit


def test_submit_sends_model_engine_payload_to_the_queue(serve: Callable[..., Served]) -> None:
    gateway = serve("worker.queue=my-endpoint")
    request = {
        "args": {"prompt": "hi"},
        "callback_url": "https://example.com/cb",
        "callback_auth": {"kind": "basic", "username": "u", "password": "p"},
        "ttl_seconds": 30,
        "timeout_seconds": 2.5,
        "unknown_field": "ignored, as model-engine's gateway does",
    }
    reply = gateway.post("/v1/async-tasks?model_endpoint_id=end_1", json=request)
    assert reply.status_code == 200, reply.text
    assert list(reply.json()) == ["task_id"]
    [sent] = gateway.broker.submitted
    assert sent["task_id"] == reply.json()["task_id"]
    assert sent["queue"] == "my-endpoint"
    assert (sent["ttl_seconds"], sent["timeout_seconds"]) == (30, 2.5)
    assert sent["payload"] == {
        "url": None,
        "args": {"prompt": "hi"},
        "cloudpickle": None,
        "callback_url": "https://example.com/cb",
        "callback_auth": {"kind": "basic", "username": "u", "password": "p"},
        "return_pickled": False,
        "destination_path": None,
    }


def test_defaults_apply_when_the_request_gives_no_limits(serve: Callable[..., Served]) -> None:
    gateway = serve("gateway.default_ttl_seconds=60", "gateway.default_timeout_seconds=5")
    assert gateway.post("/v1/async-tasks", json={"args": 1}).status_code == 200
    assert gateway.post("/v1/async-tasks", json={"args": 1, "ttl_seconds": 2}).status_code == 200
    first, second = gateway.broker.submitted
    assert (first["ttl_seconds"], first["timeout_seconds"]) == (60, 5)
    assert (second["ttl_seconds"], second["timeout_seconds"]) == (2, 5)


def test_no_limits_by_default(serve: Callable[..., Served]) -> None:
    gateway = serve()
    assert gateway.post("/v1/async-tasks", json={"args": 1}).status_code == 200
    [sent] = gateway.broker.submitted
    assert (sent["ttl_seconds"], sent["timeout_seconds"]) == (None, None)


def test_a_broker_that_fails_is_a_503(serve: Callable[..., Served]) -> None:
    gateway = serve()
    gateway.broker.fail = ConnectionError("connection refused")
    reply = gateway.post("/v1/async-tasks", json={"args": 1})
    assert reply.status_code == 503
    assert "did not answer" in reply.json()["detail"]
    assert gateway.get("/v1/async-tasks/abc").status_code == 503


# -------------------------------------------------------------------------------------- read


def _stored(status: str, **fields: Any) -> TaskResult:
    return TaskResult(task_id="t-1", status=status, **fields)


def test_success_lifts_status_code_out_of_the_result(serve: Callable[..., Served]) -> None:
    gateway = serve()
    stored = {"result": '{"y": 2}', "status_code": 201}
    gateway.broker.tasks["t-1"] = _stored("SUCCESS", result=stored)
    body = gateway.get("/v1/async-tasks/t-1").json()
    assert body == {
        "task_id": "t-1",
        "status": "SUCCESS",
        "result": {"result": '{"y": 2}'},
        "traceback": None,
        "status_code": 201,
    }
    assert stored == {"result": '{"y": 2}', "status_code": 201}  # the stored one untouched


@pytest.mark.parametrize(
    ("stored", "status", "traceback"),
    [
        (_stored("PENDING"), "PENDING", None),
        (_stored("STARTED"), "STARTED", None),
        (_stored("RETRY"), "PENDING", None),
        (_stored("REVOKED"), "CANCELED", None),
        (_stored("SOMETHING-NEW"), "UNDEFINED", None),
        (_stored("FAILURE", error="E: boom", traceback="Traceback...\nE: boom"), "FAILURE", "E: boom"),
        (_stored("FAILURE", error="boom", error_type="E", traceback="Traceback..."), "FAILURE", "E: boom"),
        (_stored("EXPIRED", error="TaskExpired: waited 3 s"), "EXPIRED", "TaskExpired: waited 3 s"),
        (_stored("TIMEOUT", error="TaskDeadlineExceeded: 1 s"), "TIMEOUT", "TaskDeadlineExceeded: 1 s"),
        (_stored("CANCELED", error="TaskCanceled: by request"), "CANCELED", "TaskCanceled: by request"),
    ],
)  # fmt: skip
def test_states_read_as_model_engine_reads_them(
    stored: TaskResult, status: str, traceback: str | None
) -> None:
    view = task_view(stored).model_dump(mode="json")
    assert view == {
        "task_id": "t-1",
        "status": status,
        "result": None,
        "traceback": traceback,
        "status_code": None,
    }


def test_a_result_without_status_code_is_returned_whole() -> None:
    view = task_view(_stored("SUCCESS", result=["a", "b"]))
    assert (view.result, view.status_code) == (["a", "b"], None)
    assert task_view(_stored("SUCCESS", result={"status_code": "x"})).status_code is None


def test_task_ids_that_could_escape_a_key_are_refused(serve: Callable[..., Served]) -> None:
    gateway = serve()
    for bad in ("..", "-x", "a b", "x" * 201):
        reply = gateway.get(f"/v1/async-tasks/{bad}")
        assert reply.status_code in (404, 422), (bad, reply.status_code)
        assert reply.json()["detail"] != "no task with this id"  # refused before any lookup
    gateway.broker.tasks["8a7e-ok_1.2:3"] = TaskResult(task_id="8a7e-ok_1.2:3", status="PENDING")
    assert gateway.get("/v1/async-tasks/8a7e-ok_1.2:3").status_code == 200


# ------------------------------------------------------------------------------------ cancel


def test_cancel_is_idempotent_and_leaves_a_finished_task_alone(
    serve: Callable[..., Served],
) -> None:
    gateway = serve()
    task_id = gateway.post("/v1/async-tasks", json={"args": 1}).json()["task_id"]
    first = gateway.post(f"/v1/async-tasks/{task_id}/cancel")
    second = gateway.post(f"/v1/async-tasks/{task_id}/cancel")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["status"] == "CANCELED"
    gateway.broker.tasks["t-1"] = _stored("SUCCESS", result={"result": "1", "status_code": 200})
    assert gateway.post("/v1/async-tasks/t-1/cancel").json()["status"] == "SUCCESS"


# ------------------------------------------------------------------------------------ limits


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(serve: Callable[..., Served]) -> None:
    gateway = serve("gateway.max_body_bytes=1000")
    assert gateway.post("/v1/async-tasks", json={"args": "x" * 900}).status_code == 200
    declared = gateway.post("/v1/async-tasks", json={"args": "x" * 1000})
    assert declared.status_code == 413
    assert declared.json() == {
        "detail": "request body larger than 1000 bytes (the gateway's max_body_bytes)"
    }

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        yield b'{"args": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    streamed = gateway.post(
        "/v1/async-tasks", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert len(gateway.broker.submitted) == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_a_415(
    serve: Callable[..., Served], content_type: str | None
) -> None:
    gateway = serve()
    headers = {"Content-Type": content_type} if content_type else {}
    reply = gateway.post("/v1/async-tasks", data=b'{"args": 1}', headers=headers)
    assert reply.status_code == 415
    assert reply.json()["detail"].startswith("Content-Type must be application/json, not ")
    assert not gateway.broker.submitted


def test_json_with_a_charset_or_a_json_suffix_is_accepted(serve: Callable[..., Served]) -> None:
    gateway = serve()
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        reply = gateway.post(
            "/v1/async-tasks", data=b'{"args": 1}', headers={"Content-Type": content_type}
        )
        assert reply.status_code == 200, (content_type, reply.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": 1, "ttl_seconds": 0}, ["body", "ttl_seconds"]),
        ({"args": 1, "ttl_seconds": "soon"}, ["body", "ttl_seconds"]),
        ({"args": 1, "timeout_seconds": -1}, ["body", "timeout_seconds"]),
        ({"args": 1, "timeout_seconds": 1e12}, ["body", "timeout_seconds"]),
        ({"args": 1, "return_pickled": "maybe"}, ["body", "return_pickled"]),
        ({"args": 1, "callback_auth": {"kind": "oauth"}}, ["body", "callback_auth"]),
        ([1, 2], ["body"]),
    ],
)
def test_validation_errors_are_422_naming_the_field(
    serve: Callable[..., Served], body: Any, field: list[str]
) -> None:
    gateway = serve()
    reply = gateway.post("/v1/async-tasks", json=body)
    assert reply.status_code == 422, reply.text
    assert field in [error["loc"] for error in reply.json()["detail"]]
    assert not gateway.broker.submitted


def test_malformed_json_is_a_422(serve: Callable[..., Served]) -> None:
    gateway = serve()
    reply = gateway.post(
        "/v1/async-tasks", data=b'{"args": ', headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["type"] == "json_invalid"


def test_a_422_never_echoes_the_request(serve: Callable[..., Served]) -> None:
    gateway = serve()
    body = {"args": 1, "callback_auth": {"kind": "basic", "username": "u", "password": 12345678}}
    reply = gateway.post("/v1/async-tasks", json=body)
    assert reply.status_code == 422
    assert "12345678" not in reply.text
    assert ["body", "callback_auth", "basic", "password"] in [
        e["loc"] for e in reply.json()["detail"]
    ]


# -------------------------------------------------------------------------------------- auth


def test_with_tokens_every_task_route_needs_one(serve: Callable[..., Served]) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}, {OTHER_TOKEN}]")
    submitted = {
        token: gateway.post(
            "/v1/async-tasks", json={"args": 1}, headers={"Authorization": f"Bearer {token}"}
        ).json()["task_id"]
        for token in (TOKEN, OTHER_TOKEN)
    }
    calls = [
        ("POST", "/v1/async-tasks", {"json": {"args": 1}}),
        ("GET", "/v1/async-tasks/{task_id}", {}),
        ("POST", "/v1/async-tasks/{task_id}/cancel", {}),
    ]
    for method, template, kwargs in calls:
        path = template.format(task_id=submitted[TOKEN])
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0000000"},
            {"Authorization": TOKEN},
        ):
            reply = gateway.http.request(
                method, gateway.url + path, headers=headers, timeout=10, **kwargs
            )
            assert reply.status_code == 401, (method, path, headers)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        for token in (TOKEN, OTHER_TOKEN):
            reply = gateway.http.request(
                method,
                gateway.url + template.format(task_id=submitted[token]),
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
                **kwargs,
            )
            assert reply.status_code == 200, (method, path, reply.text)
    assert not gateway.broker.canceled[:-2]  # only the two authorised cancels reached the broker
    assert len(gateway.broker.submitted) == 4


def test_model_engine_clients_send_the_token_as_basic_user(serve: Callable[..., Served]) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}]")
    task_id = gateway.post("/v1/async-tasks", json={"args": 1}, auth=(TOKEN, "")).json()["task_id"]
    assert gateway.get(f"/v1/async-tasks/{task_id}", auth=(TOKEN, "")).status_code == 200
    assert gateway.get(f"/v1/async-tasks/{task_id}", auth=(TOKEN, "x")).status_code == 200
    assert gateway.get("/v1/async-tasks/t-1", auth=("someone-else", TOKEN)).status_code == 401
    garbled = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
    assert gateway.get("/v1/async-tasks/t-1", headers=garbled).status_code == 401


def test_health_and_docs_need_no_token(serve: Callable[..., Served]) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}]")
    assert gateway.get("/healthz").json() == {"status": "ok"}
    assert gateway.get("/readyz").json() == {"status": "ready"}
    assert gateway.get("/docs").status_code == 200
    assert gateway.get("/openapi.json").status_code == 200


def test_without_tokens_no_auth_is_asked(serve: Callable[..., Served]) -> None:
    gateway = serve()
    task_id = gateway.post("/v1/async-tasks", json={"args": 1}).json()["task_id"]
    assert gateway.get(f"/v1/async-tasks/{task_id}").status_code == 200
    assert "securitySchemes" not in gateway.get("/openapi.json").json().get("components", {})


# ------------------------------------------------------------------------------- idempotency


def test_the_same_key_returns_the_same_task_without_sending_again(
    serve: Callable[..., Served],
) -> None:
    gateway = serve()
    headers = {"Idempotency-Key": "order-17"}
    first = gateway.post("/v1/async-tasks", json={"args": 1}, headers=headers)
    again = gateway.post("/v1/async-tasks", json={"args": 1}, headers=headers)
    other = gateway.post(
        "/v1/async-tasks", json={"args": 1}, headers={"Idempotency-Key": "order-18"}
    )
    assert first.json() == again.json() != other.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [s["task_id"] for s in gateway.broker.submitted] == [
        first.json()["task_id"],
        other.json()["task_id"],
    ]


def test_the_same_key_with_another_body_is_a_422(serve: Callable[..., Served]) -> None:
    gateway = serve()
    headers = {"Idempotency-Key": "order-17"}
    assert gateway.post("/v1/async-tasks", json={"args": 1}, headers=headers).status_code == 200
    reply = gateway.post("/v1/async-tasks", json={"args": 2}, headers=headers)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert len(gateway.broker.submitted) == 1


def test_the_gateway_and_the_cli_share_keys(
    serve: Callable[..., Served], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = serve(embedded=True)
    body = {"args": {"a": 1}, "ttl_seconds": 30}
    reply = gateway.post("/v1/async-tasks", json=body, headers={"Idempotency-Key": "shared"})
    assert reply.status_code == 200
    argv = ["submit", '{"args": {"a": 1}}', "--ttl", "30", "--idempotency-key", "shared"]
    assert cli.main([*argv, "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == reply.json()["task_id"]
    assert gateway.get(f"/v1/async-tasks/{reply.json()['task_id']}").json()["status"] == "PENDING"
    queued = list((tmp_path / "data" / "queue").iterdir())
    assert len(queued) == 1  # sent once, by the gateway


def test_keys_of_different_tokens_are_apart(serve: Callable[..., Served]) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}, {OTHER_TOKEN}]")
    ids = [
        gateway.post(
            "/v1/async-tasks",
            json={"args": 1},
            headers={"Idempotency-Key": "k", "Authorization": f"Bearer {token}"},
        ).json()["task_id"]
        for token in (TOKEN, OTHER_TOKEN)
    ]
    assert len(set(ids)) == 2


def test_a_failed_send_releases_the_key(serve: Callable[..., Served]) -> None:
    gateway = serve()
    headers = {"Idempotency-Key": "retry-me"}
    gateway.broker.fail = ConnectionError("down")
    assert gateway.post("/v1/async-tasks", json={"args": 1}, headers=headers).status_code == 503
    gateway.broker.fail = None
    reply = gateway.post("/v1/async-tasks", json={"args": 1}, headers=headers)
    assert reply.status_code == 200
    assert "Idempotent-Replayed" not in reply.headers
    assert len(gateway.broker.submitted) == 1


@pytest.mark.parametrize("key", ["", "tab\there", "é", "x" * 256])
def test_keys_must_be_printable_ascii_up_to_255(serve: Callable[..., Served], key: str) -> None:
    gateway = serve()
    reply = gateway.post(
        "/v1/async-tasks",
        json={"args": 1},
        headers={"Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


# ----------------------------------------------------------------------------- health, docs


def test_readyz_is_503_when_the_broker_does_not_answer(serve: Callable[..., Served]) -> None:
    def unreachable() -> None:
        raise ConnectionRefusedError("no broker")

    gateway = serve(broker_check=unreachable)
    reply = gateway.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {"detail": "the broker did not answer"}
    assert gateway.get("/healthz").status_code == 200


def test_the_openapi_document_validates_and_documents_the_errors(
    serve: Callable[..., Served],
) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}]")
    document = gateway.get("/openapi.json").json()
    validate(document)
    submit = document["paths"]["/v1/async-tasks"]["post"]
    assert {"200", "401", "413", "415", "422", "503"} <= set(submit["responses"])
    statuses = document["components"]["schemas"]["TaskStatus"]["enum"]
    assert statuses == [s.value for s in TaskStatus]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    json.dumps(document)  # plain JSON all through


# ------------------------------------------------------------------------------- the client


def test_the_gateway_client_speaks_the_api(serve: Callable[..., Served]) -> None:
    gateway = serve()
    with GatewayClient(gateway.url + "/") as client:
        task_id = client.submit(
            {"args": {"a": 1}}, ttl_seconds=9, timeout_seconds=3, idempotency_key="key-1"
        )
        assert (
            client.submit(
                {"args": {"a": 1}}, ttl_seconds=9, timeout_seconds=3, idempotency_key="key-1"
            )
            == task_id
        )
        [sent] = gateway.broker.submitted
        assert (sent["task_id"], sent["ttl_seconds"], sent["timeout_seconds"]) == (task_id, 9, 3)
        stored = TaskResult(
            task_id=task_id, status="SUCCESS", result={"result": "1", "status_code": 207}
        )
        gateway.broker.tasks[task_id] = stored
        # status_code put back where the gateway lifted it from: the same TaskResult either way.
        assert client.get(task_id) == stored
        assert client.wait(task_id, timeout=1).status_code == 207
        gateway.broker.tasks["other"] = TaskResult(task_id="other", status="PENDING")
        canceled = client.cancel("other")
        assert canceled == gateway.broker.tasks["other"]  # error, and no traceback, as stored
        assert (canceled.status, canceled.ready) == ("CANCELED", True)
        failed = TaskResult(
            task_id="f", status="FAILURE", error="E: boom", traceback="Traceback:\n  x\nE: boom"
        )
        gateway.broker.tasks["f"] = failed
        # The type and message only: the stack trace is the operator's (expose_tracebacks).
        assert client.get("f") == TaskResult(task_id="f", status="FAILURE", error="E: boom")


def test_the_gateway_client_raises_with_the_status_and_the_field(
    serve: Callable[..., Served],
) -> None:
    gateway = serve(f"gateway.auth_tokens=[{TOKEN}]")
    with GatewayClient(gateway.url, TOKEN) as client:
        with pytest.raises(GatewayError) as invalid:
            client.submit({"args": 1}, ttl_seconds=-1)
        assert invalid.value.status == 422
        assert "body.ttl_seconds" in str(invalid.value)
        never_done = client.submit({"args": 1})
        with pytest.raises(TaskWaitTimeout):
            client.wait(never_done, timeout=0.2)
    with GatewayClient(gateway.url) as anonymous, pytest.raises(GatewayError) as refused:
        anonymous.get("t-1")
    assert refused.value.status == 401
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with GatewayClient(f"http://127.0.0.1:{port}") as nowhere, pytest.raises(GatewayError) as down:
        nowhere.get("t-1")
    assert down.value.status is None and "unreachable" in str(down.value)


# ----------------------------------------------------------------------------------- metrics


def test_metrics_count_requests_by_route_template_and_status(
    serve: Callable[..., Served],
) -> None:
    gateway = serve("gateway.max_body_bytes=1000")
    task_ids = [
        gateway.post("/v1/async-tasks", json={"args": n}).json()["task_id"] for n in range(3)
    ]
    for task_id in task_ids:
        assert gateway.get(f"/v1/async-tasks/{task_id}").status_code == 200
    assert gateway.post("/v1/async-tasks", json={"args": "x" * 1000}).status_code == 413
    assert gateway.get("/nowhere").status_code == 404

    text = gateway.get("/metrics").text
    counts = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("forwarder_gateway_requests_total")
    }
    route = "/v1/async-tasks"
    assert (
        counts[f'forwarder_gateway_requests_total{{method="POST",route="{route}",status="200"}}']
        == 3
    )
    assert (
        counts[
            f'forwarder_gateway_requests_total{{method="GET",route="{route}/{{task_id}}",status="200"}}'
        ]
        == 3
    )
    assert (
        counts[f'forwarder_gateway_requests_total{{method="POST",route="{route}",status="413"}}']
        == 1
    )
    assert (
        counts['forwarder_gateway_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    )
    assert "forwarder_gateway_request_seconds_bucket" in text
    assert "/metrics" not in gateway.get("/openapi.json").json()["paths"]
