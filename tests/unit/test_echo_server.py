"""Tests for the echo model server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools import echo_server
from forwarder.devtools.echo_server import EchoServer, make_server
from support.imports import packages_imported

HOST = "127.0.0.1"
StartServer = Callable[..., EchoServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    started: list[tuple[EchoServer, threading.Thread]] = []

    def start(**options: Any) -> EchoServer:
        server = make_server(HOST, 0, **options)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(start_server: StartServer) -> EchoServer:
    return start_server()


class Client:
    """One keep-alive connection; remembers its first socket to prove it was never reopened."""

    def __init__(self, server: EchoServer) -> None:
        self.conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=10)
        self.first_sock: socket.socket | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if headers is None:
            headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if self.first_sock is None:
            self.first_sock = self.conn.sock
        return resp, data

    def post(self, obj: Any, path: str = "/predict") -> tuple[http.client.HTTPResponse, bytes]:
        return self.request("POST", path, json.dumps(obj).encode())

    def get_json(self, path: str) -> tuple[int, Any]:
        resp, data = self.request("GET", path)
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(data)

    def assert_single_connection(self) -> None:
        assert self.first_sock is not None
        assert self.conn.sock is self.first_sock, "connection was closed and reopened"


@pytest.fixture
def client(server: EchoServer) -> Iterator[Client]:
    c = Client(server)
    yield c
    c.conn.close()


def test_url_reports_real_bound_port(server: EchoServer) -> None:
    port = server.server_address[1]
    assert port != 0
    assert server.url == f"http://127.0.0.1:{port}"


def test_echoes_json_bytes_unchanged(client: Client) -> None:
    bodies = [
        b'{"b": [1, 2.50, "x\\u00e9"], "a": {"n": null, "t": true}}',
        b'[3, {"k": "v"}, [], 1e3]',
        b"42",
        b'"just a string"',
    ]
    for body in bodies:
        resp, data = client.request("POST", "/predict", body)
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        assert resp.getheader("Content-Length") == str(len(body))
        assert data == body
    client.assert_single_connection()


def test_status_code_control(client: Client) -> None:
    for code in (201, 418, 503):
        payload = {"status_code": code, "x": [1, 2]}
        resp, data = client.post(payload)
        assert resp.status == code
        assert json.loads(data) == payload
    resp, data = client.post({"status_code": 204})
    assert (resp.status, data) == (204, b"")
    # A 204 must not announce a body, or stricter clients desync the keep-alive stream.
    assert resp.getheader("Content-Length") is None
    resp, _ = client.post({"after": "bodiless"})
    assert resp.status == 200
    client.assert_single_connection()


def test_raw_text_control(client: Client) -> None:
    resp, data = client.post({"raw_text": "definitely <not> json"})
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/plain")
    assert data == b"definitely <not> json"
    with pytest.raises(ValueError):
        json.loads(data)
    resp, data = client.post({"raw_text": "bad gateway", "status_code": 502})
    assert (resp.status, data) == (502, b"bad gateway")
    client.assert_single_connection()


def test_delay_control_adds_to_server_delay(start_server: StartServer) -> None:
    c = Client(start_server(delay=0.1))
    for payload, minimum in (({"delay": 0.3}, 0.4), ({"n": 1}, 0.1), ([1], 0.1)):
        t0 = time.monotonic()
        resp, data = c.post(payload)
        elapsed = time.monotonic() - t0
        assert resp.status == 200
        assert json.loads(data) == payload
        assert minimum <= elapsed < minimum + 1.0
    c.assert_single_connection()
    c.conn.close()


def test_invalid_json_is_400_and_connection_survives(client: Client) -> None:
    resp, data = client.request("POST", "/predict", b'{"unterminated": ')
    assert resp.status == 400
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(data)["error"].startswith("request body is not valid JSON: ")
    resp, data = client.post({"still": "alive"})
    assert (resp.status, json.loads(data)) == (200, {"still": "alive"})
    client.assert_single_connection()


@pytest.mark.parametrize(
    "payload",
    [
        {"delay": -0.1},
        {"delay": "1"},
        {"delay": True},
        {"delay": None},
        {"status_code": 99},
        {"status_code": 600},
        {"status_code": "200"},
        {"status_code": 200.0},
        {"raw_text": 5},
    ],
)
def test_bad_control_values_are_400(client: Client, payload: dict[str, Any]) -> None:
    resp, data = client.post(payload)
    assert resp.status == 400
    assert "error" in json.loads(data)


def test_readiness_after_delay(start_server: StartServer) -> None:
    t0 = time.monotonic()
    c = Client(start_server(ready_after=0.3))
    assert c.get_json("/readyz") == (503, {"status": "starting"})
    deadline = t0 + 5.0
    while time.monotonic() < deadline:
        status, body = c.get_json("/readyz")
        if status == 200:
            break
        assert (status, body) == (503, {"status": "starting"})
        time.sleep(0.02)
    assert (status, body) == (200, {"status": "ready"})
    assert time.monotonic() - t0 >= 0.3
    c.assert_single_connection()
    c.conn.close()


def test_ready_immediately_by_default(client: Client) -> None:
    assert client.get_json("/readyz") == (200, {"status": "ready"})


def test_stats_counts_and_tracks_concurrency(server: EchoServer, client: Client) -> None:
    assert client.get_json("/stats") == (
        200,
        {"last_traceparent": None, "predict_requests": 0, "in_flight": 0, "max_in_flight": 0},
    )
    results: list[int] = []

    def slow_request() -> None:
        c = Client(server)
        resp, _ = c.post({"delay": 0.5})
        results.append(resp.status)
        c.conn.close()

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5.0
    while client.get_json("/stats")[1]["in_flight"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=10)
    assert results == [200] * 4
    client.request("POST", "/predict", b"not json")  # rejected requests still count
    client.get_json("/readyz")  # other routes do not
    status, stats = client.get_json("/stats")
    assert status == 200
    assert stats["predict_requests"] == 5
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] >= 4
    client.assert_single_connection()


def test_stats_show_the_last_traceparent(client: Client) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.request(
        "POST",
        "/predict",
        b"{}",
        headers={"traceparent": parent, "Content-Type": "application/json"},
    )
    assert client.get_json("/stats")[1]["last_traceparent"] == parent
    client.post({})
    assert client.get_json("/stats")[1]["last_traceparent"] is None


def test_unknown_path_404_and_wrong_method_405(client: Client) -> None:
    for method, path in (("GET", "/nope"), ("POST", "/nope"), ("GET", "/predict/extra")):
        resp, data = client.request(method, path, b"{}" if method == "POST" else None)
        assert resp.status == 404
        assert "error" in json.loads(data)
    for method, path, allow in (
        ("GET", "/predict", "POST"),
        ("PUT", "/predict", "POST"),
        ("POST", "/readyz", "GET"),
        ("DELETE", "/stats", "GET"),
    ):
        resp, data = client.request(method, path, b"{}" if method != "GET" else None)
        assert resp.status == 405
        assert resp.getheader("Allow") == allow
        assert resp.getheader("Content-Type") == "application/json"
        assert "error" in json.loads(data)
    client.assert_single_connection()


def test_custom_routes(start_server: StartServer) -> None:
    c = Client(start_server(predict_route="/v1/infer", healthcheck_route="/health"))
    resp, data = c.post({"a": 1}, path="/v1/infer")
    assert (resp.status, json.loads(data)) == (200, {"a": 1})
    assert c.get_json("/health") == (200, {"status": "ready"})
    assert c.post({"a": 1})[0].status == 404
    assert c.get_json("/readyz")[0] == 404
    c.conn.close()


def test_keepalive_requests_do_not_stall(client: Client) -> None:
    client.post({"warm": "up"})
    t0 = time.monotonic()
    for i in range(200):
        resp, data = client.post({"i": i, "pad": "x" * 100})
        assert resp.status == 200
        assert json.loads(data)["i"] == i
    elapsed = time.monotonic() - t0
    # A Nagle / delayed-ACK stall costs ~40 ms a request, i.e. ~8 s for 200.
    assert elapsed < 2.0, f"200 keep-alive requests took {elapsed:.2f} s"
    client.assert_single_connection()


def test_accepted_sockets_have_tcp_nodelay() -> None:
    server = make_server(HOST, 0)
    try:
        with socket.create_connection((HOST, server.server_address[1]), timeout=5):
            conn, _ = server.get_request()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.server_close()


def test_server_settings() -> None:
    assert EchoServer.daemon_threads is True
    assert EchoServer.request_queue_size >= 128


def test_request_logging_only_when_verbose(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for verbose in (False, True):
        c = Client(start_server(verbose=verbose))
        c.post({"x": 1})
        c.request("GET", "/nope")
        c.conn.close()
        err = capsys.readouterr().err
        if verbose:
            assert '"POST /predict HTTP/1.1" 200' in err
        else:
            assert err == ""


def test_serving_imports_nothing_outside_the_standard_library() -> None:
    # Benchmarks measure against it: requests, celery or gevent in it would change the figures.
    imported = packages_imported(
        """
        import threading, urllib.request
        from forwarder.devtools.echo_server import make_server

        server = make_server(port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        request = urllib.request.Request(server.url + "/predict", data=b'{"x": 1}', method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.read() == b'{"x": 1}'
        server.shutdown()
        """
    )
    assert imported == ["forwarder"]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "no output from the server process"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_announces_url_and_stops_on_signal(sig: signal.Signals) -> None:
    src = str(Path(echo_server.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    code = (
        "from forwarder.devtools.echo_server import make_server, serve; serve(make_server(port=0))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = _read_line(proc, timeout=20)
        prefix = "echo server listening on http://127.0.0.1:"
        assert line.startswith(prefix) and line.endswith("\n"), line
        port = int(line[len(prefix) :])
        assert port != 0
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("POST", "/predict", body=b'{"ping": 1}')
        assert conn.getresponse().read() == b'{"ping": 1}'
        conn.close()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout == ""
    assert stderr == ""


def test_stream_sends_openai_chunks_as_sse_one_token_at_a_time() -> None:
    import urllib.request

    server = make_server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = urllib.request.Request(
            f"{server.url}/predict",
            data=json.dumps({"stream": 3, "token_delay": 0.01}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Type"] == "text/event-stream"
            text = reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    datas = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(data) for data in datas[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "token0 ", "token1 ", "token2 ", None,
    ]  # fmt: skip
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
