"""The public API of ``forwarder``, and the small public pieces it exposes.

Besides ``forwarder.__all__``, this covers the client's ``TaskResult`` and error message (what
``forwarder get`` and the gateway show) and the backoff every retry waits by.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import random
from pathlib import Path
from typing import Any

import pytest

import forwarder
from forwarder import backoff as backoff_module
from forwarder import protocol
from forwarder.backoff import backoff
from forwarder.client import broker as client_module
from forwarder.client.broker import TaskResult, _error_message

INTENDED = {
    "__version__": None,
    "CallbackError": "forwarder.errors",
    "CallbackRefused": "forwarder.errors",
    "ClientError": "forwarder.errors",
    "ConfigError": "forwarder.errors",
    "DeadLettered": "forwarder.errors",
    "ForwarderError": "forwarder.errors",
    "GatewayError": "forwarder.errors",
    "HookError": "forwarder.errors",
    "ModelResponseError": "forwarder.errors",
    "ModelResponseTooLarge": "forwarder.errors",
    "ModelServerError": "forwarder.errors",
    "ModelServerTimeout": "forwarder.errors",
    "ModelServerUnavailable": "forwarder.errors",
    "PayloadError": "forwarder.errors",
    "TaskCanceled": "forwarder.errors",
    "TaskDeadlineExceeded": "forwarder.errors",
    "TaskExpired": "forwarder.errors",
    "TaskStopped": "forwarder.errors",
    "TaskWaitTimeout": "forwarder.errors",
    "Forwarder": "forwarder.worker.forwarding",
    "FINAL_STATES": "forwarder.protocol",
    "ForwarderClient": "forwarder.client.broker",
    "GatewayClient": "forwarder.client.gateway",
    "TaskResult": "forwarder.client.broker",
    "ModelServerSettings": "forwarder.config.settings",
    "Settings": "forwarder.config.settings",
    "WorkerSettings": "forwarder.config.settings",
    "load_settings": "forwarder.config.settings",
    "LIRA_TASK_NAME": "forwarder.protocol",
    "LEGACY_TASK_NAME": "forwarder.protocol",
}


def test_all_is_exactly_the_intended_names() -> None:
    assert sorted(forwarder.__all__) == sorted(INTENDED)
    assert len(forwarder.__all__) == len(set(forwarder.__all__))


@pytest.mark.parametrize("name", sorted(n for n in INTENDED if n != "__version__"))
def test_every_public_name_resolves_to_its_module(name: str) -> None:
    value = getattr(forwarder, name)
    module = importlib.import_module(str(INTENDED[name]))
    assert value is getattr(module, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__module__ == INTENDED[name]


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from forwarder import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(INTENDED)


def test_version_matches_the_distribution() -> None:
    assert forwarder.__version__ == importlib.metadata.version("inference-forwarder")


def test_task_names_are_model_engines() -> None:
    assert forwarder.LIRA_TASK_NAME == "ml_serve.celery_service.exec_func"
    assert forwarder.LEGACY_TASK_NAME == (
        "hosted_model_inference.inference.async_inference.tasks.predict"
    )


def test_dir_lists_the_public_names() -> None:
    assert dir(forwarder) == sorted(forwarder.__all__)


@pytest.mark.parametrize("name", ["nope", "celery_app", "broker_config", "mask_url", "_EXPORTS_"])
def test_unknown_attribute_raises_attribute_error(name: str) -> None:
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(forwarder, name)
    assert not hasattr(forwarder, name)


def test_from_import_of_an_unknown_name_fails() -> None:
    with pytest.raises(ImportError):
        exec("from forwarder import DoesNotExist", {})


# ------------------------------------------------------------------------------------ TaskResult


def test_task_result_status_code_from_a_wrapped_result() -> None:
    result = TaskResult("id-1", "SUCCESS", result={"result": '{"y": 1}', "status_code": 422})
    assert result.status_code == 422


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "text",
        [1, 2],
        {"result": 1},
        {"status_code": "200"},
        {"status_code": None},
        {"status_code": True},
    ],
)
def test_task_result_status_code_absent(stored: object) -> None:
    assert TaskResult("id-1", "SUCCESS", result=stored).status_code is None


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ("PENDING", False),
        ("STARTED", False),
        ("RETRY", False),
        ("RECEIVED", False),
        ("SUCCESS", True),
        ("FAILURE", True),
        ("EXPIRED", True),
        ("TIMEOUT", True),
        ("CANCELED", True),
        # The client never reports it: it reads as CANCELED.
        ("REVOKED", False),
    ],
)
def test_task_result_ready(status: str, ready: bool) -> None:
    assert TaskResult("id-1", status).ready is ready


def test_task_result_as_dict() -> None:
    success = TaskResult("id-1", "SUCCESS", result={"result": "{}", "status_code": 200})
    assert success.as_dict() == {
        "task_id": "id-1",
        "status": "SUCCESS",
        "result": {"result": "{}", "status_code": 200},
        "error": None,
        "traceback": None,
        "status_code": 200,
    }
    failure = TaskResult("id-2", "FAILURE", error="PayloadError: bad", traceback="Traceback ...")
    assert failure.as_dict() == {
        "task_id": "id-2",
        "status": "FAILURE",
        "result": None,
        "error": "PayloadError: bad",
        "traceback": "Traceback ...",
        "status_code": None,
    }
    json.dumps(failure.as_dict())  # printable as JSON by the CLI


# --------------------------------------------------------------------------------- error message


def test_error_message_prefers_custom() -> None:
    stored = {
        "exc_type": "ModelServerTimeout",
        "exc_message": ["celery's message"],
        "exc_module": "forwarder.errors",
        "custom": json.dumps({"error": "model server timed out", "error_metadata": "x"}),
    }
    assert _error_message(stored) == "model server timed out"


@pytest.mark.parametrize(
    "custom",
    [
        None,
        "not json",
        json.dumps({"error_metadata": "no error key"}),
        json.dumps(["error"]),
        json.dumps(None),
        json.dumps("error"),
        json.dumps({"error": None}),
        json.dumps({"error": 42}),
        {"error": "a dict, not a JSON string"},
    ],
)
def test_error_message_falls_back_to_exc_type_and_message(custom: object) -> None:
    stored: dict[str, Any] = {"exc_type": "PayloadError", "exc_message": ["payload is bad"]}
    if custom is not None:
        stored["custom"] = custom
    assert _error_message(stored) == "PayloadError: payload is bad"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"exc_type": "ValueError", "exc_message": "plain string"}, "ValueError: plain string"),
        ({"exc_type": "ConfigError", "exc_message": ["k", 1, "x"]}, "ConfigError: k 1 x"),
        ({"exc_type": "KeyError", "exc_message": ("a", "b")}, "KeyError: a b"),
        ({"exc_message": ["no type"]}, "Error: no type"),
    ],
)
def test_error_message_fallback_forms(stored: dict[str, Any], expected: str) -> None:
    assert _error_message(stored) == expected


def test_client_module_exports_and_final_states() -> None:
    assert client_module.__all__ == ["ForwarderClient", "TaskResult"]
    assert sorted(protocol.FINAL_STATES) == [
        "CANCELED",
        "EXPIRED",
        "FAILURE",
        "SUCCESS",
        "TIMEOUT",
    ]


# ---------------------------------------------------------------------------------- retry backoff


@pytest.mark.parametrize("cap", [0.5, 1.0, 5.0, 30.0, 300.0])
def test_backoff_stays_within_jittered_bounds(cap: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff_module, "random", random.Random(cap))
    for attempt in range(0, 16):
        upper = min(cap, 2.0**attempt)
        delays = [backoff(attempt, 1.0, cap) for _ in range(200)]
        assert all(0.5 * upper <= delay <= upper for delay in delays), (attempt, cap)
        # Jitter: the delays spread over the range rather than sitting on one value.
        assert max(delays) - min(delays) > 0.3 * upper


def test_backoff_grows_from_its_base_then_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    class Top:
        @staticmethod
        def uniform(low: float, high: float) -> float:
            return high

    monkeypatch.setattr(backoff_module, "random", Top())
    assert [backoff(n, 1.0, 30.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [backoff(n, 0.1, 1.0) for n in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert backoff(200, 1.0, 30.0) == 30.0
    assert backoff(5000, 0.1, float("inf")) > 1e18, "no overflow past any cap"


def test_client_without_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from forwarder.client.broker import ForwarderClient

    monkeypatch.setenv("FORWARDER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FORWARDER_QUEUE", "from-env")
    with ForwarderClient() as client:
        assert client.settings.worker.data_dir == tmp_path
        assert client.settings.worker.queue == "from-env"
        assert client.app.conf.task_default_queue == "from-env"
    assert (tmp_path / "queue").is_dir()


def test_queue_wait_from_any_form_of_arrival_timestamp() -> None:
    from datetime import UTC, datetime, timedelta

    from forwarder.worker.lifecycle import queue_wait_seconds

    ago = datetime.now() - timedelta(seconds=5)
    for arrival in (ago, ago.isoformat(), datetime.now(UTC) - timedelta(seconds=5)):
        wait = queue_wait_seconds(arrival)
        assert wait is not None and 4.9 < wait < 6, arrival
    assert queue_wait_seconds(None) is None
    assert queue_wait_seconds("yesterday") is None
