"""Callers of one gateway cannot see or touch each other's tasks, and errors hide the internals.

A real gateway (``python -m forwarder gateway`` under uvicorn) on the embedded broker in the
test's folder; FAILUREs are stored with the result backend's own ``mark_as_failure``, as a worker
stores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import load_settings
from forwarder.gateway.app import create_app
from support.processes import Processes

pytestmark = pytest.mark.integration

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"
TOKENS = f"gateway.auth_tokens=[{ALICE}, {BOB}]"
NEVER_ISSUED = "0b1e3c4d-0000-4000-8000-000000000000"


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _submit(url: str, token: str | None = None, **headers: str) -> str:
    auth = _as(token) if token else {}
    reply = requests.post(
        f"{url}/v1/async-tasks", json={"args": {"x": 1}}, headers={**auth, **headers}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["task_id"])


def _task_paths(data_dir: Path) -> list[tuple[str, str]]:
    """Every route of the gateway under a task id: a route added later is checked here too."""
    settings = load_settings(env={}, flags={"--data-dir": str(data_dir)})
    app = create_app(settings, broker_check=lambda: None)
    paths = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if "{task_id}" in path
        for method in operations
    ]
    assert len(paths) >= 2, paths
    return paths


def test_another_callers_task_and_an_unissued_id_are_404(procs: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    gateway = procs.gateway(data_dir=data, sets=[TOKENS])
    alices = _submit(gateway.url, ALICE)
    for method, template in _task_paths(tmp_path / "routes"):
        for token, task_id in ((BOB, alices), (ALICE, NEVER_ISSUED), (BOB, NEVER_ISSUED)):
            path = template.replace("{task_id}", task_id)
            reply = requests.request(method, gateway.url + path, headers=_as(token), timeout=10)
            assert reply.status_code == 404, (method, path, token[:5], reply.text)
            assert reply.json() == {"detail": "no task with this id"}
    mine = requests.get(f"{gateway.url}/v1/async-tasks/{alices}", headers=_as(ALICE), timeout=10)
    assert mine.status_code == 200 and mine.json()["status"] == "PENDING"
    # Bob's cancel never reached the task: Alice's is still queued, not CANCELED.
    canceled = requests.post(
        f"{gateway.url}/v1/async-tasks/{alices}/cancel", headers=_as(ALICE), timeout=10
    )
    assert canceled.json()["status"] == "CANCELED"
    stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert alices.encode() in stored  # the owner record is in the data folder ...
    assert ALICE.encode() not in stored and BOB.encode() not in stored  # ... without a token


def test_the_same_idempotency_key_of_two_callers_makes_two_private_tasks(
    procs: Processes, tmp_path: Path
) -> None:
    gateway = procs.gateway(data_dir=tmp_path / "data", sets=[TOKENS])
    alices = _submit(gateway.url, ALICE, **{"Idempotency-Key": "order-1"})
    bobs = _submit(gateway.url, BOB, **{"Idempotency-Key": "order-1"})
    assert alices != bobs
    assert _submit(gateway.url, BOB, **{"Idempotency-Key": "order-1"}) == bobs
    reply = requests.get(f"{gateway.url}/v1/async-tasks/{alices}", headers=_as(BOB), timeout=10)
    assert reply.status_code == 404


def test_without_tokens_an_unissued_id_is_404(procs: Processes, tmp_path: Path) -> None:
    gateway = procs.gateway(data_dir=tmp_path / "data")
    issued = _submit(gateway.url)
    assert requests.get(f"{gateway.url}/v1/async-tasks/{issued}", timeout=10).status_code == 200
    for path in (f"/v1/async-tasks/{NEVER_ISSUED}", f"/v1/async-tasks/{NEVER_ISSUED}/cancel"):
        method = "POST" if path.endswith("cancel") else "GET"
        assert requests.request(method, gateway.url + path, timeout=10).status_code == 404


def _fail(data_dir: Path, task_id: str) -> None:
    """Store a FAILURE whose message and stack trace name an internal host and file."""
    settings = load_settings(env={}, flags={"--data-dir": str(data_dir)})
    with ForwarderClient(settings) as client:
        trace = (
            "Traceback (most recent call last):\n"
            '  File "/srv/forwarder/worker/forwarding.py", line 88, in call_model\n'
            "RuntimeError: model server refused"
        )
        refused = RuntimeError("model server http://10.0.3.7:5005/predict refused (10.0.3.7:5005)")
        client.app.backend.mark_as_failure(task_id, refused, traceback=trace)


def _failed_view(procs: Processes, tmp_path: Path, *sets: str) -> dict[str, Any]:
    data = tmp_path / f"data-{len(procs.gateways)}"
    gateway = procs.gateway(data_dir=data, sets=list(sets))
    task_id = _submit(gateway.url)
    _fail(data, task_id)
    reply = requests.get(f"{gateway.url}/v1/async-tasks/{task_id}", timeout=10)
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    assert list(body) == ["task_id", "status", "result", "traceback", "status_code"]
    return body


def test_a_failure_shows_its_type_and_message_not_the_stack_trace(
    procs: Processes, tmp_path: Path
) -> None:
    hidden = _failed_view(procs, tmp_path)
    assert hidden["status"] == "FAILURE"
    assert hidden["traceback"] == "RuntimeError: model server <url> refused (<address>)"
    shown = _failed_view(procs, tmp_path, "gateway.expose_tracebacks=true")
    assert shown["traceback"].startswith("Traceback (most recent call last):")
    assert "/srv/forwarder/worker/forwarding.py" in shown["traceback"]
