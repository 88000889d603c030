"""The callback hook's parts: signing, secrets, URLs, retry rules, and its calls through a fake transport.

The transport is requests' own adapter interface: a test adapter mounted on the hook's session sees
each prepared request (headers, body, timeout, client certificate) and answers from a script, so
that retries run without a network and without waiting.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import MaxRetryError

from forwarder.config.hooks import BasicAuth, CallbackSettings, MtlsAuth
from forwarder.errors import CallbackError, ConfigError
from forwarder.hooks.base import TaskOutcome
from forwarder.hooks.callback import CallbackHook, checked_url
from forwarder.hooks.delivery import retry_delay, retryable
from forwarder.hooks.signing import sign, signing_key
from forwarder.hooks.url_policy import UrlPolicy

URL = "http://receiver.test/hook"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n"


def verify_standard_webhook(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: int = 300
) -> bool:
    """A receiver's check, written from the Standard Webhooks specification."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else None
    key = secret.encode() if key is None else key
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        return False
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = hmac.digest(key, content, "sha256")
    for entry in headers["webhook-signature"].split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False


# ------------------------------------------------------------------------------------ signing


def test_signature_matches_the_specification_test_vector() -> None:
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret", ["whsec_c2VjcmV0LWtleS1ieXRlcw==", "plain text secret é"])
def test_signature_verifies_and_binds_id_timestamp_and_body(secret: str) -> None:
    body = b'{"task_id": "t1", "result": 1}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_t1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(signing_key(secret), "msg_t1", now, body),
    }
    assert verify_standard_webhook(secret, headers, body, now)
    assert not verify_standard_webhook(secret, headers, body + b" ", now)
    assert not verify_standard_webhook(secret, {**headers, "webhook-id": "msg_t2"}, body, now)
    assert not verify_standard_webhook(
        secret, {**headers, "webhook-timestamp": str(now + 1)}, body, now
    )
    assert not verify_standard_webhook("wrong-" + secret, headers, body, now)


def test_secret_decoding() -> None:
    assert signing_key("whsec_" + base64.b64encode(b"\x00\xffkey").decode()) == b"\x00\xffkey"
    assert signing_key("not-prefixed") == b"not-prefixed"
    assert signing_key("pässword") == "pässword".encode()


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "whsec_abc"])
def test_malformed_whsec_secret_is_a_config_error_that_hides_it(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        signing_key(secret)
    assert caught.value.key == "callback.signing_secret"
    assert caught.value.value == "(not shown)"
    assert "not base64!" not in str(caught.value)


def test_malformed_secret_stops_the_hook_at_construction() -> None:
    with pytest.raises(ConfigError):
        CallbackHook(CallbackSettings(signing_secret="whsec_%%%"))


# --------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/cb", "https://example.com/x?token=1", "HTTPS://Example.com"]
)
def test_http_and_https_urls_pass(url: str) -> None:
    assert checked_url(url, UrlPolicy(allow_private_networks=True)).url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/cb",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_",
        "javascript:alert(1)",
        "127.0.0.1:8080/cb",
        "http:///no-host",
        "http://[::1/broken",
        "http://host:99999/bad-port",
        42,
        {"url": URL},
    ],
)
def test_other_urls_are_refused(url: object) -> None:
    with pytest.raises(CallbackError, match="callback_url"):
        checked_url(url)


# ------------------------------------------------------------------------------- retry rules


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *[(429, True), (500, True), (502, True), (503, True), (599, True)],
        *[(400, False), (401, False), (404, False), (409, False), (301, False), (600, False)],
    ],
)
def test_retryable_statuses(status: int, expected: bool) -> None:
    assert retryable(status) is expected


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter() -> None:
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (400, 5.0)]:
        delays = [retry_delay(attempt, 0.5, 5.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling / 10, "no jitter"


def test_retry_after_seconds_are_honoured_up_to_the_cap() -> None:
    assert retry_delay(1, 0.5, 5.0, "2") == 2.0
    assert retry_delay(1, 0.5, 5.0, " 0 ") == 0.0
    assert retry_delay(1, 0.5, 5.0, "3600") == 5.0
    # An HTTP date or junk is not a number of seconds: the backoff applies.
    for value in ["Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1.5", "soon"]:
        assert 0.25 <= retry_delay(1, 0.5, 5.0, value) <= 0.5


# ----------------------------------------------------------------- the hook, fake transport


@dataclass
class Sent:
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: Any
    cert: Any


class ScriptedAdapter(BaseAdapter):
    """Answers each request with the next scripted reply: a status (with headers) or an exception."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = script
        self.sent: list[Sent] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        body = request.body if isinstance(request.body, bytes) else b""
        self.sent.append(Sent(str(request.url), dict(request.headers), body, timeout, cert))
        if cert:
            # The files must exist while the call is made: a TLS connection reads them then.
            assert Path(cert[0]).read_text() and Path(cert[1]).read_text()
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, Exception):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(headers)
        response.raw = BytesIO(b'{"received": true}')
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


class FakeTransportHook(CallbackHook):
    def __init__(self, settings: CallbackSettings, script: list[Any]) -> None:
        self.sleeps: list[float] = []
        super().__init__(settings, sleep=self.sleeps.append)
        self.adapter = ScriptedAdapter(script)

    def _new_session(self) -> requests.Session:
        session = super()._new_session()
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)
        return session


@pytest.fixture
def make_hook() -> Iterator[Any]:
    hooks: list[CallbackHook] = []

    def make(script: list[Any] | None = None, **settings: Any) -> FakeTransportHook:
        values = {"default_url": URL, "backoff_seconds": 0.5, "backoff_max_seconds": 2.0}
        hook = FakeTransportHook(CallbackSettings(**{**values, **settings}), script or [])
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def outcome(request: Any = None, task_id: str = "task-1") -> TaskOutcome:
    return TaskOutcome(
        task_id=task_id,
        queue="q",
        request={"args": {"x": 1}} if request is None else request,
        succeeded=True,
        result={"result": {"y": 2}, "status_code": 200},
    )


def test_posts_the_response_body_as_json_with_a_timeout(make_hook: Any) -> None:
    hook = make_hook(timeout_seconds=7.5)
    hook(outcome())
    [sent] = hook.adapter.sent
    assert sent.url == URL
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.body) == {"result": {"y": 2}, "status_code": 200, "task_id": "task-1"}
    assert sent.timeout == (7.5, 7.5)
    assert "webhook-signature" not in sent.headers


def test_failed_task_is_reported_too(make_hook: Any) -> None:
    hook = make_hook()
    hook(TaskOutcome("t9", None, {}, succeeded=False, error="ModelServerTimeout: slow"))
    body = json.loads(hook.adapter.sent[0].body)
    assert body == {"task_id": "t9", "status": "FAILURE", "error": "ModelServerTimeout: slow"}


def test_request_url_wins_over_the_default(make_hook: Any) -> None:
    hook = make_hook()
    hook(outcome({"callback_url": "https://other.test/cb"}))
    hook(outcome({"callback_url": None}))
    assert [s.url for s in hook.adapter.sent] == ["https://other.test/cb", URL]


def test_no_url_means_no_call(make_hook: Any) -> None:
    hook = make_hook(default_url=None)
    hook(outcome({"callback_url": ""}))
    hook(outcome("not a mapping"))
    assert hook.adapter.sent == []


def test_non_http_request_url_is_refused_without_a_call(make_hook: Any) -> None:
    hook = make_hook()
    with pytest.raises(CallbackError, match="http"):
        hook(outcome({"callback_url": "file:///etc/passwd"}))
    assert hook.adapter.sent == []


def test_retries_503_then_succeeds(make_hook: Any) -> None:
    hook = make_hook([503, 502, 200], max_attempts=3, signing_secret="s3cret")
    hook(outcome())
    assert len(hook.adapter.sent) == 3
    assert len(hook.sleeps) == 2
    assert 0.25 <= hook.sleeps[0] <= 0.5 and 0.5 <= hook.sleeps[1] <= 1.0
    # Every attempt is the same message: a receiver can drop the duplicates by id.
    assert {s.headers["webhook-id"] for s in hook.adapter.sent} == {"msg_task-1"}
    assert {s.body for s in hook.adapter.sent} == {hook.adapter.sent[0].body}


def test_gives_up_after_max_attempts_naming_the_last_status(make_hook: Any) -> None:
    hook = make_hook([500] * 10, max_attempts=4)
    with pytest.raises(CallbackError, match=r"after 4 attempt\(s\); last: HTTP 500"):
        hook(outcome())
    assert len(hook.adapter.sent) == 4
    assert len(hook.sleeps) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 302])
def test_other_statuses_fail_at_once(make_hook: Any, status: int) -> None:
    hook = make_hook([(status, {"Location": "http://elsewhere.test/"})], max_attempts=5)
    with pytest.raises(CallbackError, match=f"HTTP {status}.*not retried"):
        hook(outcome())
    assert len(hook.adapter.sent) == 1
    assert hook.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError("refused"),
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
    ],
)
def test_connection_errors_and_timeouts_are_retried(make_hook: Any, error: Exception) -> None:
    hook = make_hook([error, 200], max_attempts=2)
    hook(outcome())
    assert len(hook.adapter.sent) == 2


def test_other_request_errors_are_not_retried(make_hook: Any) -> None:
    hook = make_hook([requests.exceptions.InvalidHeader("bad header"), 200], max_attempts=3)
    with pytest.raises(CallbackError, match="InvalidHeader"):
        hook(outcome())
    assert len(hook.adapter.sent) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_but_capped(make_hook: Any, status: int) -> None:
    hook = make_hook(
        [(status, {"Retry-After": "1"}), (status, {"Retry-After": "120"}), 200], max_attempts=3
    )
    hook(outcome())
    assert hook.sleeps == [1.0, 2.0]


def test_retry_after_on_other_statuses_is_ignored(make_hook: Any) -> None:
    hook = make_hook([(500, {"Retry-After": "0"}), 200], max_attempts=2)
    hook(outcome())
    assert 0.25 <= hook.sleeps[0] <= 0.5


def test_basic_auth_from_the_request_or_the_default(make_hook: Any) -> None:
    hook = make_hook(default_auth=BasicAuth("operator", "op-pass"))
    hook(outcome({"callback_auth": {"kind": "basic", "username": "ana", "password": "pä:ss"}}))
    hook(outcome())
    sent = [s.headers["Authorization"] for s in hook.adapter.sent]
    assert sent == [
        "Basic " + base64.b64encode("ana:pä:ss".encode()).decode(),
        "Basic " + base64.b64encode(b"operator:op-pass").decode(),
    ]


def test_malformed_request_auth_fails_without_a_call(make_hook: Any) -> None:
    hook = make_hook()
    with pytest.raises(ConfigError) as caught:
        hook(outcome({"callback_auth": {"kind": "basic", "username": "u", "password": 5}}))
    assert caught.value.key == "callback_auth.password"
    assert hook.adapter.sent == []


def test_encrypted_client_key_is_refused(make_hook: Any) -> None:
    hook = make_hook()
    encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    auth = {"kind": "mtls", "cert": CERT_PEM, "key": encrypted}
    with pytest.raises(ConfigError, match="unencrypted"):
        hook(outcome({"callback_auth": auth}))
    assert hook.adapter.sent == []


def _mtls(n: int) -> dict[str, str]:
    return {"kind": "mtls", "cert": CERT_PEM.replace("cert", f"cert{n}"), "key": KEY_PEM}


def test_client_certificate_files_are_private_reused_and_removed(make_hook: Any) -> None:
    hook = make_hook()
    hook(outcome({"callback_auth": _mtls(1)}))
    hook(outcome({"callback_auth": _mtls(1)}))
    hook(outcome({"callback_auth": _mtls(2)}))
    first, again, other = (s.cert for s in hook.adapter.sent)
    assert first == again and first != other
    cert, key = (Path(p) for p in first)
    assert cert.read_text() == _mtls(1)["cert"] and key.read_text() == KEY_PEM
    for path in (cert, key, cert.parent):
        assert not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO), path
    hook.close()
    assert not cert.exists() and not key.exists() and not cert.parent.exists()


def test_client_certificate_files_are_bounded(make_hook: Any) -> None:
    hook = make_hook(default_auth=MtlsAuth(CERT_PEM, KEY_PEM))
    for n in range(100):
        hook(outcome({"callback_auth": _mtls(n)}))
    folder = Path(hook.adapter.sent[0].cert[0]).parent
    assert 2 <= len([*folder.glob("*.crt"), *folder.glob("*.key")]) <= 2 * 32
    # The most recent one is still there for the next task.
    last = hook.adapter.sent[-1].cert
    hook(outcome({"callback_auth": _mtls(99)}))
    assert hook.adapter.sent[-1].cert == last


def test_new_session_and_files_in_a_new_process(make_hook: Any, monkeypatch: Any) -> None:
    hook = make_hook(default_auth=MtlsAuth(CERT_PEM, KEY_PEM))
    hook(outcome())
    parent = hook._process()
    parent_cert = Path(hook.adapter.sent[0].cert[0])
    monkeypatch.setattr(os, "getpid", lambda: -1)
    hook(outcome())
    assert hook._process().session is not parent.session
    child_cert = Path(hook.adapter.sent[1].cert[0])
    assert child_cert.parent != parent_cert.parent
    hook.close()
    # What the parent's exit handler, inherited through fork, does when the child exits.
    parent.certs.close()
    assert parent_cert.exists(), "a child removed its parent's certificate files"
    assert not child_cert.exists()
    monkeypatch.undo()
    parent.certs.close()
    assert not parent_cert.exists()


def test_secrets_stay_out_of_logs_and_errors(
    make_hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="forwarder")
    secrets = ["hunter2-password", "signing-secret-value", "tok3n-in-query", "path-token-x"]
    query_url = "/path-token-x?t=tok3n-in-query"
    hook = make_hook(
        # What requests raises on a refused connection: its message carries path and query.
        [503, requests.ConnectionError(MaxRetryError(None, query_url, OSError("refused"))), 401],
        max_attempts=3,
        signing_secret="signing-secret-value",
    )
    auth = {"kind": "basic", "username": "ana", "password": "hunter2-password"}
    url = "https://receiver.test" + query_url
    with pytest.raises(CallbackError) as caught:
        hook(outcome({"callback_url": url, "callback_auth": auth}))
    assert "https://receiver.test" in str(caught.value)
    shown = caplog.text + str(caught.value)
    assert "HTTP 503" in caplog.text
    assert [s for s in secrets if s in shown] == []
