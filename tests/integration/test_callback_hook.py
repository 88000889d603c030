"""The callback hook against real receivers on 127.0.0.1: HTTP, HTTPS with client certificates.

Each receiver is a threaded ``http.server`` that records what it was sent and answers from a script.
The TLS one trusts a throwaway CA made with ``trustme`` and requires a client certificate from it;
the hook trusts that CA through ``REQUESTS_CA_BUNDLE``, as any requests user would.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from forwarder.config.hooks import BasicAuth, CallbackSettings, MtlsAuth
from forwarder.errors import CallbackError
from forwarder.hooks.base import TaskOutcome
from forwarder.hooks.callback import CallbackHook

pytestmark = [pytest.mark.integration]

HOST = "127.0.0.1"
SECRET = "whsec_" + base64.b64encode(b"receiver-and-sender-share-this").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    client_cert_subject: str | None
    signature_ok: bool | None


@dataclass
class Receiver:
    """What a receiver was sent, and the replies it gives: (status, headers), then 200s."""

    url: str
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    failed_connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _verified(headers: dict[str, str], body: bytes) -> bool | None:
    """The receiver's Standard Webhooks check (None when the call is not signed)."""
    if "webhook-signature" not in headers:
        return None
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and any(
        hmac.compare_digest(entry, f"v1,{expected}")
        for entry in headers["webhook-signature"].split()
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        subject = None
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert() or {}
            subject = dict(pair[0] for pair in peer.get("subject", ())).get("commonName")
        with receiver.lock:
            receiver.received.append(
                Received(
                    self.path,
                    headers,
                    body,
                    self.client_address[1],
                    subject,
                    _verified(headers, body),
                )
            )
            status, extra = receiver.replies.pop(0) if receiver.replies else (200, {})
        time.sleep(receiver.delay)
        reply = json.dumps({"status": status}).encode()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A refused TLS handshake lands here: counted, not printed.
        with self.receiver.lock:
            self.receiver.failed_connections += 1


@dataclass
class Pki:
    ca_bundle: Path
    server_context: ssl.SSLContext
    client: MtlsAuth


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("client.test", common_name="callback-client")
    ca_bundle = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    return Pki(
        ca_bundle,
        server_context,
        MtlsAuth(
            cert=client.cert_chain_pems[0].bytes().decode(),
            key=client.private_key_pem.bytes().decode(),
        ),
    )


@pytest.fixture
def start_receiver() -> Iterator[Callable[..., Receiver]]:
    servers: list[_Server] = []

    def start(tls: ssl.SSLContext | None = None, **options: Any) -> Receiver:
        server = _Server((HOST, 0), _Handler)
        if tls is not None:
            # The handshake runs in the handler's thread, so a refused one is counted there.
            server.socket = tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        scheme = "https" if tls else "http"
        server.receiver = Receiver(f"{scheme}://{HOST}:{server.server_address[1]}/hook", **options)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server.receiver

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_hook() -> Iterator[Callable[..., CallbackHook]]:
    hooks: list[CallbackHook] = []

    def make(**settings: Any) -> CallbackHook:
        # The receivers are on 127.0.0.1, which a request's callback_url may name only so.
        values = {
            "timeout_seconds": 5.0,
            "backoff_seconds": 0.02,
            "backoff_max_seconds": 0.1,
            "allow_private_networks": True,
        }
        hook = CallbackHook(CallbackSettings(**{**values, **settings}))
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


@pytest.fixture
def trust_ca(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Pki:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_bundle))
    return pki


def outcome(task_id: str = "task-1", **request: Any) -> TaskOutcome:
    return TaskOutcome(
        task_id, "q", {"args": {}, **request}, True, {"result": "ok", "status_code": 200}
    )


def test_basic_auth_and_body_arrive(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver = start_receiver()
    hook = make_hook(default_url=receiver.url, default_auth=BasicAuth("op", "default-pass"))
    auth = {"kind": "basic", "username": "ana", "password": "pä55 wörd"}
    hook(outcome(callback_auth=auth))
    hook(outcome("task-2"))
    first, second = receiver.received
    assert first.path == "/hook"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == {"result": "ok", "status_code": 200, "task_id": "task-1"}
    credentials = base64.b64decode(first.headers["authorization"].removeprefix("Basic "))
    assert credentials.decode() == "ana:pä55 wörd"
    assert (
        second.headers["authorization"] == "Basic " + base64.b64encode(b"op:default-pass").decode()
    )
    # One kept-alive connection for both calls.
    assert first.client_port == second.client_port


def test_default_auth_goes_only_to_the_default_url(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver, elsewhere = start_receiver(), start_receiver()
    hook = make_hook(default_url=receiver.url, default_auth=BasicAuth("op", "default-pass"))
    hook(outcome("itself", callback_url=receiver.url))
    hook(outcome("same-origin", callback_url=receiver.url.replace("/hook", "/other-path")))
    hook(outcome("elsewhere", callback_url=elsewhere.url))
    itself, other_path = receiver.received
    assert itself.headers["authorization"].startswith("Basic ")
    assert "authorization" not in other_path.headers
    assert "authorization" not in elsewhere.received[0].headers


def test_mtls_handshake_with_the_client_certificate(
    start_receiver: Callable[..., Receiver],
    make_hook: Callable[..., CallbackHook],
    trust_ca: Pki,
) -> None:
    receiver = start_receiver(trust_ca.server_context)
    hook = make_hook()
    auth = {"kind": "mtls", "cert": trust_ca.client.cert, "key": trust_ca.client.key}
    hook(outcome(callback_url=receiver.url, callback_auth=auth))
    [received] = receiver.received
    assert received.client_cert_subject == "callback-client"
    assert json.loads(received.body)["task_id"] == "task-1"


def test_mtls_without_a_client_certificate_fails(
    start_receiver: Callable[..., Receiver],
    make_hook: Callable[..., CallbackHook],
    trust_ca: Pki,
) -> None:
    receiver = start_receiver(trust_ca.server_context)
    hook = make_hook(default_url=receiver.url, max_attempts=2)
    with pytest.raises(CallbackError, match=r"after 2 attempt\(s\)"):
        hook(outcome())
    assert receiver.received == []
    assert receiver.failed_connections >= 1


def test_untrusted_receiver_certificate_fails(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook], pki: Pki
) -> None:
    # REQUESTS_CA_BUNDLE is left as the system's: the throwaway CA is not trusted.
    receiver = start_receiver(pki.server_context)
    hook = make_hook(default_url=receiver.url, default_auth=pki.client, max_attempts=1)
    with pytest.raises(CallbackError, match="SSLError"):
        hook(outcome())
    assert receiver.received == []


def test_signature_verifies_at_the_receiver_on_every_attempt(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver = start_receiver(replies=[(503, {})])
    hook = make_hook(default_url=receiver.url, signing_secret=SECRET)
    hook(outcome("task-7"))
    assert [r.signature_ok for r in receiver.received] == [True, True]
    assert {r.headers["webhook-id"] for r in receiver.received} == {"msg_task-7"}


def test_503_then_200_succeeds_after_one_retry(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver = start_receiver(replies=[(503, {})])
    hook = make_hook(default_url=receiver.url, max_attempts=3)
    hook(outcome())
    assert len(receiver.received) == 2


def test_always_503_gives_up_after_exactly_max_attempts(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver = start_receiver(replies=[(503, {})] * 10)
    hook = make_hook(default_url=receiver.url, max_attempts=4)
    with pytest.raises(CallbackError, match=r"after 4 attempt\(s\); last: HTTP 503"):
        hook(outcome())
    assert len(receiver.received) == 4


def test_400_is_not_retried(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    receiver = start_receiver(replies=[(400, {})])
    hook = make_hook(default_url=receiver.url, max_attempts=4)
    with pytest.raises(CallbackError, match=r"HTTP 400.*not retried"):
        hook(outcome())
    assert len(receiver.received) == 1


def test_redirect_is_not_followed(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    elsewhere = start_receiver()
    receiver = start_receiver(replies=[(307, {"Location": elsewhere.url})])
    hook = make_hook(default_url=receiver.url, default_auth=BasicAuth("op", "pw"))
    with pytest.raises(CallbackError, match="HTTP 307"):
        hook(outcome())
    assert len(receiver.received) == 1
    assert elsewhere.received == []


def test_retry_after_is_honoured_up_to_the_cap(
    start_receiver: Callable[..., Receiver], make_hook: Callable[..., CallbackHook]
) -> None:
    def timed(reply: tuple[int, dict[str, str]], backoff: float) -> float:
        receiver = start_receiver(replies=[reply])
        hook = make_hook(default_url=receiver.url, backoff_seconds=backoff, backoff_max_seconds=0.6)
        started = time.monotonic()
        hook(outcome())
        assert len(receiver.received) == 2
        return time.monotonic() - started

    # The backoff alone would wait 0.3 s at least.
    assert timed((429, {"Retry-After": "0"}), backoff=0.6) < 0.2
    # The backoff alone would wait 0.05 s at most; Retry-After asks for a minute.
    assert 0.6 <= timed((503, {"Retry-After": "60"}), backoff=0.05) < 0.9


def test_connection_refused_is_retried_then_fails(
    make_hook: Callable[..., CallbackHook], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.INFO, logger="forwarder.hooks.delivery")
    url = f"http://{HOST}:{port}/hook/secret-path?token=secret-token"
    hook = make_hook(default_url=url, max_attempts=3, backoff_seconds=0.1, backoff_max_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(CallbackError, match=r"after 3 attempt\(s\); last: ConnectionError") as e:
        hook(outcome())
    elapsed = time.monotonic() - started
    retries = [r for r in caplog.records if "next in" in r.getMessage()]
    assert len(retries) == 2
    assert elapsed >= 0.05 + 0.1, f"{elapsed:.2f} s: the backoff was not waited"
    assert "secret" not in str(e.value) + caplog.text


def test_non_http_url_is_refused_without_a_connection(
    make_hook: Callable[..., CallbackHook],
) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        hook = make_hook(max_attempts=3)
        for url in [f"ftp://{HOST}:{port}/hook", f"gopher://{HOST}:{port}/_", "file:///etc/passwd"]:
            with pytest.raises(CallbackError, match="http"):
                hook(outcome(callback_url=url))
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_a_forked_child_uses_its_own_connection_and_files(
    start_receiver: Callable[..., Receiver],
    make_hook: Callable[..., CallbackHook],
    trust_ca: Pki,
) -> None:
    receiver = start_receiver(trust_ca.server_context)
    other = start_receiver(trust_ca.server_context)
    hook = make_hook(default_url=receiver.url, default_auth=trust_ca.client)
    hook(outcome("parent-1"))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            hook(outcome("child"))
            hook.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    hook(outcome("parent-2"))
    # A new connection elsewhere reads the certificate files again: the child left them alone.
    own_auth = {"kind": "mtls", "cert": trust_ca.client.cert, "key": trust_ca.client.key}
    hook(outcome("parent-3", callback_url=other.url, callback_auth=own_auth))
    ports = {json.loads(r.body)["task_id"]: r.client_port for r in receiver.received}
    assert ports["parent-1"] == ports["parent-2"] != ports["child"]
    assert other.received[0].client_cert_subject == "callback-client"


def test_gevent_greenlets_call_at_once(
    start_receiver: Callable[..., Receiver], trust_ca: Pki, tmp_path: Path
) -> None:
    receiver = start_receiver(trust_ca.server_context, delay=0.5)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"cert": trust_ca.client.cert, "key": trust_ca.client.key}))
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import json, time
        import gevent.pool
        from forwarder.config.hooks import CallbackSettings, MtlsAuth
        from forwarder.hooks.base import TaskOutcome
        from forwarder.hooks.callback import CallbackHook

        auth = MtlsAuth(**json.load(open({str(auth)!r})))
        hook = CallbackHook(CallbackSettings(default_url={receiver.url!r}, default_auth=auth,
                                             signing_secret={SECRET!r}))
        started = time.monotonic()
        gevent.pool.Pool(8).map(
            lambda n: hook(TaskOutcome(f"g{{n}}", None, {{}}, True, {{"result": n}})), range(8)
        )
        print(time.monotonic() - started)
        hook.close()
        """
    )
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(trust_ca.ca_bundle)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    elapsed = float(done.stdout)
    # Eight calls of 0.5 s each take 4 s one after another; at once, 0.5 s plus TLS handshakes
    # (slow on a loaded machine).
    assert elapsed < 3.0, f"8 callbacks took {elapsed:.2f} s in 8 greenlets"
    assert sorted(json.loads(r.body)["task_id"] for r in receiver.received) == [
        f"g{n}" for n in range(8)
    ]
    assert all(r.signature_ok and r.client_cert_subject for r in receiver.received)
