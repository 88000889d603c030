"""The error tree, ConfigError, and the ``custom`` error payload stored with every failure."""

from __future__ import annotations

import inspect
import json
import pickle
import re
import traceback
from typing import Any

import pytest
from celery import Celery
from celery.backends.base import BaseBackend

from forwarder import errors
from forwarder.celery_ext.backends.base import ErrorPayloadMixin, error_payload
from forwarder.errors import (
    CallbackError,
    CallbackRefused,
    ClientError,
    ConfigError,
    DeadLettered,
    ForwarderError,
    HookError,
    ModelResponseError,
    ModelResponseTooLarge,
    ModelServerError,
    ModelServerTimeout,
    ModelServerUnavailable,
    PayloadError,
    TaskCanceled,
    TaskDeadlineExceeded,
    TaskExpired,
    TaskStopped,
    TaskWaitTimeout,
)

ERROR_CLASSES = [
    getattr(errors, name)
    for name in errors.__all__
    if inspect.isclass(getattr(errors, name)) and issubclass(getattr(errors, name), BaseException)
]
MESSAGE_CLASSES = [cls for cls in ERROR_CLASSES if cls is not ConfigError]


def _docstring_tree() -> dict[str, str | None]:
    """Class name -> parent name, read from the drawing in the module docstring."""
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z][A-Za-z]+)(\s|$)", line)
        if not match or ("──" not in match["indent"] and match["name"] != "ForwarderError"):
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        tree[match["name"]] = stack[-1][1] if stack else None
        stack.append((depth, match["name"]))
    return tree


def test_every_error_class_is_listed() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert names == {
        "CallbackError",
        "CallbackRefused",
        "ClientError",
        "ConfigError",
        "DeadLettered",
        "ForwarderError",
        "GatewayError",
        "HookError",
        "ModelResponseError",
        "ModelResponseTooLarge",
        "ModelServerError",
        "ModelServerTimeout",
        "ModelServerUnavailable",
        "PayloadError",
        "TaskCanceled",
        "TaskDeadlineExceeded",
        "TaskExpired",
        "TaskStopped",
        "TaskWaitTimeout",
    }


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_derives_from_forwarder_error(cls: type[Exception]) -> None:
    assert issubclass(cls, ForwarderError)
    assert issubclass(cls, Exception)


def test_hierarchy() -> None:
    assert ForwarderError.__bases__ == (Exception,)
    for cls in (ConfigError, PayloadError, ModelServerError, TaskStopped, HookError, ClientError):
        assert cls.__bases__ == (ForwarderError,)
    assert CallbackError.__bases__ == (HookError,)
    assert CallbackRefused.__bases__ == (CallbackError,)
    for cls in (ModelServerUnavailable, ModelServerTimeout, ModelResponseError):
        assert cls.__bases__ == (ModelServerError,)
    assert TaskWaitTimeout.__bases__ == (ClientError,)
    assert ModelResponseTooLarge.__bases__ == (ModelResponseError,)
    for cls in (TaskExpired, TaskDeadlineExceeded, TaskCanceled, DeadLettered):
        assert cls.__bases__ == (TaskStopped,)
    # The final state each one is stored as: a dead-lettered task is a plain FAILURE.
    assert (
        TaskExpired.state,
        TaskDeadlineExceeded.state,
        TaskCanceled.state,
        DeadLettered.state,
    ) == ("EXPIRED", "TIMEOUT", "CANCELED", "FAILURE")


def test_docstring_tree_matches_the_classes() -> None:
    tree = _docstring_tree()
    actual = {
        cls.__name__: (None if cls is ForwarderError else cls.__bases__[0].__name__)
        for cls in ERROR_CLASSES
    }
    assert tree == actual


def test_config_error_attributes_and_message() -> None:
    exc = ConfigError("forwarder.async.user_port", 70000, "a port number from 1 to 65535")
    assert exc.key == "forwarder.async.user_port"
    assert exc.value == 70000
    assert exc.allowed == "a port number from 1 to 65535"
    assert str(exc) == (
        "invalid forwarder.async.user_port=70000; allowed: a port number from 1 to 65535"
    )


def test_config_error_quotes_string_values() -> None:
    assert str(ConfigError("--pool", "solo", "one of prefork, gevent")) == (
        "invalid --pool='solo'; allowed: one of prefork, gevent"
    )


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("a\nb", 1, "x"),
        ("key", "line1\nline2", "x"),
        ("key", 1, "first\nsecond\r\nthird\u2028fourth"),
    ],
)
def test_config_error_message_is_one_line(key: str, value: object, allowed: str) -> None:
    message = str(ConfigError(key, value, allowed))
    assert len(message.splitlines()) == 1
    assert message.startswith("invalid ")


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_task_errors_rebuild_from_their_args(cls: type[Exception]) -> None:
    exc = cls("model server at http://127.0.0.1:1/predict did not reply within 3 s")
    rebuilt = cls(*exc.args)
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(exc)
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


def test_config_error_rebuilds_from_its_args() -> None:
    exc = ConfigError("--concurrency", "-1", "a positive whole number")
    rebuilt = ConfigError(*exc.args)
    assert str(rebuilt) == str(exc)
    assert (rebuilt.key, rebuilt.value, rebuilt.allowed) == (exc.key, exc.value, exc.allowed)
    unpickled = pickle.loads(pickle.dumps(exc))
    assert str(unpickled) == str(exc)
    assert unpickled.key == "--concurrency"


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_payload_has_message_and_traceback() -> None:
    exc = _raised(ModelResponseError("model server replied HTTP 500 with text/html"))
    payload = error_payload(exc)
    assert set(payload) == {"error", "error_metadata"}
    assert payload["error"] == str(exc)
    assert payload["error_metadata"].startswith("Internal failure\n")
    stack = payload["error_metadata"].removeprefix("Internal failure\n")
    assert stack == "".join(traceback.format_exception(exc))
    assert "Traceback (most recent call last)" in stack
    assert "_raised" in stack
    assert "ModelResponseError: model server replied HTTP 500" in stack


def test_error_payload_of_an_exception_never_raised() -> None:
    payload = error_payload(ValueError("bad"))
    assert payload == {"error": "bad", "error_metadata": "Internal failure\nValueError: bad\n"}


class _FakeBackend:
    """The one collaborator the mixin calls: a base ``prepare_exception``."""

    def prepare_exception(self, exc: BaseException, serializer: str | None = None) -> Any:
        if serializer == "pickle":
            return exc
        return {"exc_type": type(exc).__name__, "exc_message": list(exc.args), "exc_module": "m"}


class _MixedFake(ErrorPayloadMixin, _FakeBackend):
    pass


def test_prepare_exception_adds_custom_to_the_base_result() -> None:
    exc = _raised(PayloadError("payload must be a JSON object, got list"))
    prepared = _MixedFake().prepare_exception(exc, "json")
    assert prepared["exc_type"] == "PayloadError"
    assert prepared["exc_message"] == ["payload must be a JSON object, got list"]
    assert prepared["exc_module"] == "m"
    custom = json.loads(prepared["custom"])
    assert custom["error"] == "payload must be a JSON object, got list"
    assert custom["error_metadata"].startswith("Internal failure\n")


def test_prepare_exception_leaves_non_dict_results_alone() -> None:
    exc = PayloadError("x")
    assert _MixedFake().prepare_exception(exc, "pickle") is exc


class _CeleryBackend(ErrorPayloadMixin, BaseBackend):  # type: ignore[misc]
    pass


def test_prepare_exception_with_celerys_base_backend() -> None:
    app = Celery(set_as_current=False)
    try:
        backend = _CeleryBackend(app=app, serializer="json")
        exc = _raised(ModelServerTimeout("model server did not reply within 2 s"))
        prepared = backend.prepare_exception(exc, "json")
        assert prepared["exc_type"] == "ModelServerTimeout"
        assert prepared["exc_module"] == "forwarder.errors"
        assert list(prepared["exc_message"]) == ["model server did not reply within 2 s"]
        assert isinstance(prepared["custom"], str)
        custom = json.loads(prepared["custom"])
        assert custom["error"] == "model server did not reply within 2 s"
        assert "ModelServerTimeout" in custom["error_metadata"]
        # Celery rebuilds the exception from exc_type / exc_message, as any client would.
        rebuilt = backend.exception_to_python(prepared)
        assert type(rebuilt).__name__ == "ModelServerTimeout"
        assert str(rebuilt) == str(exc)
    finally:
        app.close()
