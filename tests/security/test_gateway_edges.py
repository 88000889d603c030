"""The gateway's edge against callers without a token and slow clients, over real sockets to a
real gateway (``python -m forwarder gateway`` under uvicorn) on 127.0.0.1.

Measured on the code before these limits: 100 stalled 1 MiB uploads without a token grew the
gateway by 107 MiB (each body read before the token check); 300 connections sending their
headers one byte at a time were all still open after 40 s.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from forwarder.config.settings import load_settings
from forwarder.devtools.localrun import free_port
from forwarder.errors import ConfigError
from forwarder.gateway.server import _refuse_anonymous
from support.env import GATEWAY_ENV_VARS, base_env
from support.processes import Processes

pytestmark = pytest.mark.integration

TOKEN = "edge-token-0123456789"
MIB = 1024 * 1024


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection(_address(url), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def _rss(procs: Processes) -> int:
    return int(psutil.Process(procs.gateways[-1].child.pid).memory_info().rss)


def _stalled_upload(url: str) -> tuple[socket.socket, bytes]:
    """A 1 MiB upload without a token, all but its last byte sent; what the gateway answered."""
    sock = _connect(url)
    head = (
        "POST /v1/async-tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MIB}\r\n\r\n"
    )
    # Refused and closed before the body was in (a failed send) is what is wanted.
    with contextlib.suppress(OSError):
        sock.sendall(head.encode() + b" " * (MIB - 1))
    sock.settimeout(10)
    try:
        answer = sock.recv(200)
    except OSError:
        answer = b""
    return sock, answer


def test_a_caller_without_a_token_costs_no_body_memory(procs: Processes, tmp_path: Path) -> None:
    procs.gateway(data_dir=tmp_path / "data", sets=[f"gateway.auth_tokens=[{TOKEN}]"])
    url = procs.gateways[-1].url
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    before = _rss(procs)
    with ThreadPoolExecutor(max_workers=20) as pool:
        uploads = list(pool.map(lambda _: _stalled_upload(url), range(100)))
    grown = _rss(procs) - before
    for sock, _ in uploads:
        sock.close()
    answered = [answer for _, answer in uploads if answer]
    assert all(answer.startswith(b"HTTP/1.1 401") for answer in answered), answered[:1]
    # Before: +107 MiB (every body buffered). Now the 401 comes after the headers.
    assert grown < 30 * MIB, f"gateway grew {grown / MIB:.0f} MiB"


def _slowloris(url: str, count: int, timeout: float) -> tuple[int, float]:
    """``count`` connections sending their headers a byte at a time: (closed by the gateway,
    seconds until the last was closed)."""
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    for _ in range(count):
        sock = _connect(url)
        sock.sendall(b"POST /v1/async-tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed, last = 0, 0.0
    deadline = started + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                closed, last = closed + 1, time.monotonic() - started
        for key in list(selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            with contextlib.suppress(OSError):
                sock.send(b"a")  # one more byte of the header: never finishing it
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return closed, last


def test_slow_headers_are_cut_off_at_the_header_timeout(procs: Processes, tmp_path: Path) -> None:
    procs.gateway(data_dir=tmp_path / "data", sets=["gateway.header_timeout_seconds=2"])
    closed, last = _slowloris(procs.gateways[-1].url, 300, timeout=30)
    assert closed == 300, f"{300 - closed} slow connections still open after 30 s"
    assert last < 20, last  # 2 s each, with a loaded machine's margin
    assert requests.get(f"{procs.gateways[-1].url}/healthz", timeout=10).status_code == 200


def test_a_body_sent_too_slowly_is_a_408(procs: Processes, tmp_path: Path) -> None:
    gateway = procs.gateway(
        data_dir=tmp_path / "data",
        sets=[f"gateway.auth_tokens=[{TOKEN}]", "gateway.body_timeout_seconds=1"],
    )
    with _connect(gateway.url) as sock:
        sock.sendall(
            f"POST /v1/async-tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}"
            "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        started = time.monotonic()
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 10


def test_past_max_connections_requests_are_503(procs: Processes, tmp_path: Path) -> None:
    gateway = procs.gateway(data_dir=tmp_path / "data", sets=["gateway.max_connections=4"])
    held = [_connect(gateway.url) for _ in range(4)]
    try:
        time.sleep(0.5)  # accepted by the server, not just queued
        assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while requests.get(f"{gateway.url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "still 503 once the connections closed"
        time.sleep(0.2)


def test_only_trusted_host_headers_are_served(procs: Processes, tmp_path: Path) -> None:
    gateway = procs.gateway(
        data_dir=tmp_path / "data", sets=["gateway.trusted_hosts=gw.example,*.internal"]
    )
    for host, status in (("127.0.0.1", 400), ("evil.example", 400), ("gw.example", 200)):
        reply = requests.get(f"{gateway.url}/healthz", headers={"Host": host}, timeout=10)
        assert reply.status_code == status, host
    reply = requests.get(f"{gateway.url}/healthz", headers={"Host": "a.internal"}, timeout=10)
    assert reply.status_code == 200


def test_docs_and_metrics_access_is_settable(procs: Processes, tmp_path: Path) -> None:
    gateway = procs.gateway(
        data_dir=tmp_path / "data",
        sets=[
            f"gateway.auth_tokens=[{TOKEN}]",
            "gateway.metrics_access=token",
            "gateway.docs_access=disabled",
        ],
    )
    assert requests.get(f"{gateway.url}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{gateway.url}/v1/async-tasks/abc", timeout=10).status_code == 401
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    metrics = requests.get(f"{gateway.url}/metrics", headers=with_token, timeout=10)
    assert metrics.status_code == 200
    # A refusal before routing is still counted under its route's template.
    assert 'route="/v1/async-tasks/{task_id}",status="401"' in metrics.text
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert requests.get(gateway.url + path, headers=with_token, timeout=10).status_code == 404


def test_metrics_can_have_a_listener_of_their_own(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    gateway = procs.gateway(
        data_dir=tmp_path / "data",
        sets=[f"gateway.metrics_port={port}", "gateway.metrics_host=127.0.0.1"],
    )
    assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{gateway.url}/metrics", timeout=10).status_code == 404
    deadline = time.monotonic() + 10
    while True:
        try:
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the metrics listener never answered"
            time.sleep(0.2)
    assert 'route="/healthz"' in metrics.text


def test_without_tokens_a_public_address_is_refused_unless_allowed(tmp_path: Path) -> None:
    env = base_env(XDG_DATA_HOME=str(tmp_path / "xdg"))
    refused = subprocess.run(
        [sys.executable, "-m", "forwarder", "gateway", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "gateway.host (--host)" in refused.stderr and "--allow-anonymous" in refused.stderr
    # The check itself, without binding anything but loopback in a test:
    public = ("0.0.0.0", 8000)
    for flags, overrides in (
        ({"--allow-anonymous": "true"}, ()),
        ({}, (f"gateway.auth_tokens=[{TOKEN}]",)),
    ):
        settings = load_settings(env={}, overrides=overrides, flags=flags)
        _refuse_anonymous(settings, public)
    with pytest.raises(ConfigError):
        _refuse_anonymous(load_settings(env={}), public)
    _refuse_anonymous(load_settings(env={}), ("::1", 8000, 0, 0))


def test_allow_anonymous_is_a_switch_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.cli.commands import build_parser
    from forwarder.cli.flags import settings_from

    for name in GATEWAY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    parser = build_parser()
    assert settings_from(parser.parse_args(["gateway"])).gateway.allow_anonymous is False
    alone = parser.parse_args(["gateway", "--allow-anonymous", "--port", "0"])
    assert settings_from(alone).gateway.allow_anonymous is True
    said_no = parser.parse_args(["gateway", "--allow-anonymous", "false"])
    assert settings_from(said_no).gateway.allow_anonymous is False
