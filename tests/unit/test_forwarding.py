"""Forwarding: payload unwrapping, response wrapping, and the Forwarder over real local sockets."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3

from forwarder.config.settings import ModelServerSettings
from forwarder.devtools.echo_server import EchoServer, make_server
from forwarder.errors import (
    ModelResponseError,
    ModelResponseTooLarge,
    ModelServerTimeout,
    ModelServerUnavailable,
    PayloadError,
)
from forwarder.worker import forwarding
from forwarder.worker.forwarding import Forwarder, unwrap_payload, wrap_response

HOST = "127.0.0.1"

UNWRAP = ModelServerSettings(model_engine_unwrap=True, serialize_results_as_string=True)
NO_UNWRAP = ModelServerSettings(model_engine_unwrap=False, serialize_results_as_string=False)


# --------------------------------------------------------------------------------- unwrap_payload


def test_unwrap_takes_args() -> None:
    payload = {"url": None, "args": {"x": 1}, "callback_url": "http://127.0.0.1:1/cb"}
    body, serialize = unwrap_payload(payload, UNWRAP)
    assert body == {"x": 1}
    assert serialize is True


def test_unwrap_without_args_forwards_the_payload() -> None:
    payload = {"x": 1}
    body, serialize = unwrap_payload(payload, UNWRAP)
    assert body is payload
    assert serialize is True


@pytest.mark.parametrize("args", [[1, 2], "text", 5, None])
def test_unwrap_forwards_args_of_any_json_type(args: object) -> None:
    body, _ = unwrap_payload({"args": args}, UNWRAP)
    assert body == args


def test_no_unwrap_forwards_the_whole_payload() -> None:
    payload = {"args": {"x": 1}, "url": None}
    body, serialize = unwrap_payload(payload, NO_UNWRAP)
    assert body is payload
    assert serialize is False


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize("override", [True, False])
def test_payload_level_override(setting: bool, override: bool) -> None:
    model = ModelServerSettings(model_engine_unwrap=False, serialize_results_as_string=setting)
    body, serialize = unwrap_payload({"x": 1, "serialize_results_as_string": override}, model)
    assert serialize is override
    assert body == {"x": 1, "serialize_results_as_string": override}


@pytest.mark.parametrize("override", [True, False])
def test_override_inside_args(override: bool) -> None:
    model = ModelServerSettings(serialize_results_as_string=not override)
    body, serialize = unwrap_payload(
        {"args": {"x": 1, "serialize_results_as_string": override}}, model
    )
    assert serialize is override
    assert body["x"] == 1


def test_override_inside_args_is_ignored_without_unwrap() -> None:
    model = ModelServerSettings(model_engine_unwrap=False, serialize_results_as_string=True)
    _, serialize = unwrap_payload({"args": {"serialize_results_as_string": False}}, model)
    assert serialize is True


def test_top_level_override_wins_over_the_one_in_args() -> None:
    payload = {
        "serialize_results_as_string": False,
        "args": {"serialize_results_as_string": True},
    }
    _, serialize = unwrap_payload(payload, UNWRAP)
    assert serialize is False


@pytest.mark.parametrize("value", ["false", "true", 0, 1, [], {"a": 1}])
@pytest.mark.parametrize("setting", [True, False])
def test_non_boolean_override_is_ignored(
    value: object, setting: bool, caplog: pytest.LogCaptureFixture
) -> None:
    model = ModelServerSettings(serialize_results_as_string=setting)
    with caplog.at_level("WARNING", logger="forwarder.worker.forwarding"):
        _, top = unwrap_payload({"serialize_results_as_string": value, "args": {}}, model)
        _, inner = unwrap_payload({"args": {"serialize_results_as_string": value}}, model)
    assert top is setting
    assert inner is setting
    assert "ignoring serialize_results_as_string" in caplog.text


def test_null_override_is_no_override() -> None:
    _, serialize = unwrap_payload({"serialize_results_as_string": None, "args": {}}, UNWRAP)
    assert serialize is True


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"args": {"x": 1}, "cloudpickle": "gASVAAAAAAAAAAB9lC4="}, "cloudpickle"),
        ({"args": {"x": 1}, "return_pickled": True}, "return_pickled"),
        ({"args": {"x": 1}, "return_pickled": "yes"}, "return_pickled"),
    ],
)
def test_pickled_requests_are_refused(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=f"{field}.*not supported"):
        unwrap_payload(payload, UNWRAP)


def test_unpickled_flags_are_accepted_as_data() -> None:
    payload = {"args": {"x": 1}, "cloudpickle": None, "return_pickled": False}
    assert unwrap_payload(payload, UNWRAP) == ({"x": 1}, True)
    # Without unwrapping the payload is the model's own body: its keys mean nothing here.
    whole = {"cloudpickle": "abc", "return_pickled": True}
    assert unwrap_payload(whole, NO_UNWRAP) == (whole, False)


# ---------------------------------------------------------------------------------- wrap_response


@pytest.mark.parametrize("wrap", [True, False])
@pytest.mark.parametrize("serialize", [True, False])
@pytest.mark.parametrize("in_body", [True, False])
def test_wrap_response_combinations(wrap: bool, serialize: bool, in_body: bool) -> None:
    model = ModelServerSettings(wrap_response=wrap, forward_http_status_in_body=in_body)
    response = {"y": [1, 2.5, "z"], "n": None}
    result = wrap_response(response, 201, model, serialize)
    if not wrap:
        assert result is response
        return
    expected: dict[str, Any] = {"result": json.dumps(response) if serialize else response}
    if in_body:
        expected["status_code"] = 201
    assert result == expected
    if serialize:
        assert isinstance(result["result"], str)
        assert json.loads(result["result"]) == response


@pytest.mark.parametrize("response", [[1, 2], "text", 3.5, None, True])
def test_wrap_response_of_any_json_value(response: object) -> None:
    assert wrap_response(response, 200, ModelServerSettings(), True) == {
        "result": json.dumps(response),
        "status_code": 200,
    }
    assert wrap_response(response, 500, ModelServerSettings(), False) == {
        "result": response,
        "status_code": 500,
    }


# ------------------------------------------------------------------------- Forwarder over sockets


@pytest.fixture
def start_server() -> Iterator[Callable[..., EchoServer]]:
    started: list[EchoServer] = []

    def start(**options: Any) -> EchoServer:
        server = make_server(HOST, 0, **options)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        thread.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(start_server: Callable[..., EchoServer]) -> EchoServer:
    return start_server()


def model_for(port: int, **options: Any) -> ModelServerSettings:
    return ModelServerSettings(user_hostname=HOST, user_port=port, **options)


def make_forwarder(port: int, *, read_timeout: float = 5.0, **options: Any) -> Forwarder:
    return Forwarder(
        model_for(port, **options), connect_timeout=2.0, read_timeout=read_timeout, pool_size=4
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def count_connections(server: EchoServer) -> list[Any]:
    """Record every connection the server accepts (set before it serves anything)."""
    accepted: list[Any] = []
    original = server.get_request

    def get_request() -> tuple[socket.socket, Any]:
        conn, addr = original()
        accepted.append(addr)
        return conn, addr

    server.get_request = get_request  # type: ignore[method-assign]
    return accepted


def test_json_reply_is_wrapped(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    payload = {"args": {"prompt": "hi", "n": [1, 2]}, "url": None, "callback_url": None}
    assert forward(payload) == {
        "result": json.dumps({"prompt": "hi", "n": [1, 2]}),
        "status_code": 200,
    }
    assert server.stats()["predict_requests"] == 1


def test_reply_as_object_without_unwrap(server: EchoServer) -> None:
    forward = make_forwarder(
        server.server_port, model_engine_unwrap=False, serialize_results_as_string=False
    )
    payload = {"args": {"x": 1}, "extra": "kept"}
    assert forward(payload) == {"result": payload, "status_code": 200}


def test_bare_reply_when_not_wrapping(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port, wrap_response=False)
    assert forward({"args": {"x": 1}}) == {"x": 1}


def test_payload_override_reaches_the_result(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    result = forward({"args": {"x": 1, "serialize_results_as_string": False}})
    assert result == {"result": {"x": 1, "serialize_results_as_string": False}, "status_code": 200}


def test_list_args_are_forwarded(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    assert forward({"args": [1, "two"]}) == {"result": '[1, "two"]', "status_code": 200}


@pytest.mark.parametrize("status", [400, 422, 500, 503])
def test_non_2xx_json_reply_is_a_result(server: EchoServer, status: int) -> None:
    forward = make_forwarder(server.server_port, serialize_results_as_string=False)
    body = {"status_code": status, "detail": "model says no"}
    assert forward({"args": body}) == {"result": body, "status_code": status}


@pytest.mark.parametrize("status", [200, 502])
def test_non_json_reply_is_a_response_error(server: EchoServer, status: int) -> None:
    forward = make_forwarder(server.server_port)
    with pytest.raises(ModelResponseError) as info:
        forward({"args": {"raw_text": "<html>Bad Gateway</html>", "status_code": status}})
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert "text/plain" in message
    assert "<html>Bad Gateway</html>" in message
    assert f"{HOST}:{server.server_port}/predict" in message


def test_non_json_reply_excerpt_is_bounded(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    with pytest.raises(ModelResponseError) as info:
        forward({"args": {"raw_text": "x" * 5000}})
    assert "5000 bytes" in str(info.value)
    assert len(str(info.value)) < 600


def test_read_timeout(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port, read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ModelServerTimeout) as info:
        forward({"args": {"delay": 1.0}})
    assert time.monotonic() - started < 0.9
    assert "0.2 s" in str(info.value)
    assert f"{HOST}:{server.server_port}" in str(info.value)


def test_timeout_then_recovery(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port, read_timeout=0.2)
    with pytest.raises(ModelServerTimeout):
        forward({"args": {"delay": 0.5}})
    assert forward({"args": {"ok": 1}}) == {"result": '{"ok": 1}', "status_code": 200}


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes, float], int]]:
    """A one-shot server: reads the request, sends the given bytes, waits, then hangs up."""
    listeners: list[socket.socket] = []
    stop = threading.Event()

    def start(reply: bytes, hold: float) -> int:
        listener = socket.socket()
        listener.bind((HOST, 0))
        listener.listen(1)
        listeners.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                if reply:
                    conn.sendall(reply)
                stop.wait(hold)

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


def test_read_timeout_in_the_middle_of_the_body(
    raw_server: Callable[[bytes, float], int],
) -> None:
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    port = raw_server(headers + b'{"partial": ', 5.0)
    forward = make_forwarder(port, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ModelServerTimeout, match=r"did not reply within 0\.3 s"):
        forward({"args": {}})
    assert time.monotonic() - started < 3.0


def test_hang_up_without_a_reply_is_unavailable(
    raw_server: Callable[[bytes, float], int],
) -> None:
    port = raw_server(b"", 0.0)
    forward = make_forwarder(port)
    with pytest.raises(ModelServerUnavailable, match=re.escape(f"{HOST}:{port}/predict")):
        forward({"args": {}})


def test_connection_refused_is_unavailable() -> None:
    port = closed_port()
    forward = make_forwarder(port)
    with pytest.raises(ModelServerUnavailable) as info:
        forward({"args": {}})
    assert f"{HOST}:{port}/predict" in str(info.value)
    assert "cannot connect" in str(info.value)


@pytest.mark.parametrize("payload", [[1, 2], "text", 5, None, True])
def test_non_object_payload_is_a_payload_error(server: EchoServer, payload: object) -> None:
    forward = make_forwarder(server.server_port)
    with pytest.raises(PayloadError) as info:
        forward(payload)
    assert "JSON object" in str(info.value)
    assert type(payload).__name__ in str(info.value)
    assert server.stats()["predict_requests"] == 0


@pytest.mark.parametrize(
    "args",
    [
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": [1, float("-inf")]},
        {"x": {1, 2}},
        {"x": object()},
        {"x": b"bytes"},
    ],
)
def test_unsendable_payload_is_a_payload_error(server: EchoServer, args: dict[str, Any]) -> None:
    forward = make_forwarder(server.server_port)
    with pytest.raises(PayloadError) as info:
        forward({"args": args})
    assert "cannot be sent as JSON" in str(info.value)
    assert server.stats()["predict_requests"] == 0


def test_one_keep_alive_connection_is_reused(start_server: Callable[..., EchoServer]) -> None:
    server = start_server()
    accepted = count_connections(server)
    forward = make_forwarder(server.server_port)
    for index in range(5):
        assert forward({"args": {"i": index}})["result"] == json.dumps({"i": index})
    assert server.stats()["predict_requests"] == 5
    assert len(accepted) == 1


def test_keep_alive_survives_error_replies(start_server: Callable[..., EchoServer]) -> None:
    server = start_server()
    accepted = count_connections(server)
    forward = make_forwarder(server.server_port)
    forward({"args": {"status_code": 500}})
    with pytest.raises(ModelResponseError):
        forward({"args": {"raw_text": "nope"}})
    forward({"args": {"ok": True}})
    assert len(accepted) == 1


def test_session_is_created_once_and_shared_by_threads(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    barrier = threading.Barrier(8)
    sessions: list[object] = []

    def grab() -> None:
        barrier.wait()
        sessions.append(forward.session())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sessions) == 8
    assert all(session is sessions[0] for session in sessions)
    assert forward.session() is sessions[0]


def test_new_session_when_the_pid_changes(
    server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = make_forwarder(server.server_port)
    first = forward.session()
    assert forward.session() is first
    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as seen by a forked child
    second = forward.session()
    assert second is not first
    assert forward.session() is second


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_session(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    parent_session = forward.session()
    assert forward({"args": {"who": "parent"}})["status_code"] == 200
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 1
        try:
            os.close(read_end)
            inherited = forward._session.peek()
            child_session = forward.session()
            reply = forward({"args": {"who": "child"}})
            report = {
                "inherited_is_parent": inherited is parent_session,
                "new_session": child_session is not parent_session,
                "stable": forward.session() is child_session,
                "kept_for_this_process": forward._session.peek() is child_session,
                "session_id": id(child_session),
                "reply": reply,
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(b"".join(chunks))
    assert report["inherited_is_parent"] is False, "a child never sees its parent's pool"
    assert report["new_session"] is True
    assert report["stable"] is True
    assert report["kept_for_this_process"] is True
    assert report["session_id"] != id(parent_session)
    assert report["reply"] == {"result": '{"who": "child"}', "status_code": 200}
    # The parent's session is untouched and still works.
    assert forward.session() is parent_session
    assert forward({"args": {"who": "parent"}})["status_code"] == 200


# ------------------------------------------------------------------------------- wait_until_ready


def test_wait_until_ready_returns_at_once_when_ready(server: EchoServer) -> None:
    forward = make_forwarder(server.server_port)
    started = time.monotonic()
    forward.wait_until_ready(timeout=5, interval=0.05)
    assert time.monotonic() - started < 1.0


def test_wait_until_ready_waits_for_readiness(start_server: Callable[..., EchoServer]) -> None:
    server = start_server(ready_after=0.4)
    forward = make_forwarder(server.server_port)
    started = time.monotonic()
    forward.wait_until_ready(timeout=5, interval=0.05)
    elapsed = time.monotonic() - started
    assert server.is_ready()
    assert 0.2 <= elapsed < 3.0


def test_wait_until_ready_without_timeout(start_server: Callable[..., EchoServer]) -> None:
    server = start_server(ready_after=0.3)
    forward = make_forwarder(server.server_port)
    forward.wait_until_ready(timeout=0, interval=0.05)
    assert server.is_ready()


def test_wait_until_ready_uses_the_healthcheck_route(
    start_server: Callable[..., EchoServer],
) -> None:
    server = start_server(healthcheck_route="/healthz")
    forward = make_forwarder(server.server_port, healthcheck_route="/healthz")
    forward.wait_until_ready(timeout=2, interval=0.05)
    wrong = make_forwarder(server.server_port, healthcheck_route="/readyz")
    with pytest.raises(ModelServerUnavailable, match=r"HTTP 404"):
        wrong.wait_until_ready(timeout=0.3, interval=0.05)


def test_wait_until_ready_times_out_when_nothing_listens() -> None:
    port = closed_port()
    forward = make_forwarder(port)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable) as info:
        forward.wait_until_ready(timeout=0.4, interval=0.05, sleep=sleep)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0
    assert f"{HOST}:{port}/readyz" in str(info.value)
    assert "not ready after 0.4 s" in str(info.value)
    assert "ConnectionError" in str(info.value)
    assert len(sleeps) >= 2
    assert all(seconds == 0.05 for seconds in sleeps)


def test_wait_until_ready_times_out_when_never_ready(
    start_server: Callable[..., EchoServer],
) -> None:
    server = start_server(ready_after=3600)
    forward = make_forwarder(server.server_port)
    with pytest.raises(ModelServerUnavailable, match=r"last: HTTP 503"):
        forward.wait_until_ready(timeout=0.3, interval=0.05)


def test_wait_until_ready_is_bounded_by_its_timeout_when_the_probe_hangs() -> None:
    # A socket that listens but never answers: the connection is made, no reply ever comes.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        forward = make_forwarder(listener.getsockname()[1], read_timeout=30.0)
        started = time.monotonic()
        with pytest.raises(ModelServerUnavailable, match="Timeout"):
            forward.wait_until_ready(timeout=0.5, interval=0.05)
        assert time.monotonic() - started < 3.0


def test_wait_without_timeout_probes_again_when_the_readiness_route_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no overall timeout, a hanging probe must still give up (not wait out the model's
    # 30 s read timeout) and be retried, so the wait keeps logging and can see readiness.
    monkeypatch.setattr(forwarding, "READINESS_READ_TIMEOUT", 0.2)
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        forward = make_forwarder(listener.getsockname()[1], read_timeout=30.0)
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 3:
                raise RuntimeError("third probe")

        started = time.monotonic()
        with pytest.raises(RuntimeError, match="third probe"):
            forward.wait_until_ready(timeout=0, interval=0.05, sleep=sleep)
        assert time.monotonic() - started < 3.0


def test_forwarder_settings_are_used(server: EchoServer) -> None:
    model = model_for(server.server_port)
    forward = Forwarder(model, connect_timeout=1.5, read_timeout=7.0, pool_size=3)
    assert forward.model is model
    assert forward.timeout == (1.5, 7.0)
    pool = forward.session().connection_from_url(model.predict_url)
    assert pool.pool is not None and pool.pool.maxsize == 3
    assert isinstance(pool.retries, urllib3.Retry) and pool.retries.total is False
    assert isinstance(pool.timeout, urllib3.Timeout)
    assert (pool.timeout.connect_timeout, pool.timeout.read_timeout) == (1.5, 7.0)
    assert dataclasses.replace(model, user_port=1).predict_url == f"http://{HOST}:1/predict"


def test_a_proxy_in_the_environment_is_used(
    server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    proxied = make_forwarder(server.server_port).session()
    assert isinstance(proxied, urllib3.ProxyManager)
    assert proxied.proxy is not None and proxied.proxy.host == "proxy.invalid"
    monkeypatch.setenv("NO_PROXY", HOST)
    assert not isinstance(make_forwarder(server.server_port).session(), urllib3.ProxyManager)


# ----------------------------------------------------------------------------- max_response_bytes


def bounded_forwarder(port: int, limit: int) -> Forwarder:
    return Forwarder(
        model_for(port), connect_timeout=2.0, read_timeout=5.0, pool_size=4,
        max_response_bytes=limit,
    )  # fmt: skip


def test_a_reply_of_unknown_length_past_the_bound_fails_and_the_next_call_works(
    start_server: Callable[..., EchoServer],
) -> None:
    server = start_server()
    accepted = count_connections(server)
    forward = bounded_forwarder(server.server_port, 100_000)
    with pytest.raises(ModelResponseTooLarge) as raised:
        forward({"args": {"reply_bytes": 5_000_000}})
    assert str(raised.value).startswith(
        f"model server at http://{HOST}:{server.server_port}/predict replied with more than "
        "worker.max_response_bytes=100000 (more than 100000 bytes read)"
    )
    # The half-read connection was closed, not handed to the next call.
    assert forward({"args": {"n": 1}}) == {"result": '{"n": 1}', "status_code": 200}
    assert len(accepted) == 2


def test_a_reply_within_the_bound_is_read_whole(server: EchoServer) -> None:
    forward = bounded_forwarder(server.server_port, 300_000)
    reply = forward({"args": {"reply_bytes": 200_000}, "serialize_results_as_string": False})
    assert reply["result"] == "x" * 199_998


def test_an_announced_length_past_the_bound_fails_before_the_body_is_read(
    raw_server: Callable[[bytes, float], int],
) -> None:
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n"
    # The body never comes: only the announced length can fail the call in time.
    port = raw_server(headers, 5.0)
    forward = bounded_forwarder(port, 500)
    started = time.monotonic()
    with pytest.raises(ModelResponseTooLarge, match=r"\(announced 900 bytes\)"):
        forward({"args": {}})
    assert time.monotonic() - started < 3.0
