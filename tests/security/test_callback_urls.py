"""Callback URLs an attacker writes: the default credentials stay home, internal addresses stay shut.

Real receivers on 127.0.0.1 (the ``callback_receiver`` kind, each recording what reached it), the
real hook and its real HTTP client; the last tests run a real worker and a real gateway.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from forwarder.config.hooks import BasicAuth, CallbackSettings
from forwarder.errors import CallbackError, CallbackRefused, ConfigError
from forwarder.hooks.base import HookRunner, TaskOutcome
from forwarder.hooks.callback import CallbackHook
from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_all

DEFAULT_AUTH = BasicAuth("operator", "default-pass-0123")
BASIC = "Basic " + base64.b64encode(b"operator:default-pass-0123").decode()


@pytest.fixture
def receivers() -> Iterator[tuple[CallbackReceiver, CallbackReceiver]]:
    with CallbackReceiver() as default, CallbackReceiver() as other:
        yield default, other


def outcome(task_id: str = "t1", **request: Any) -> TaskOutcome:
    return TaskOutcome(task_id, "q", {"args": {}, **request}, True, {"result": "ok"})


def hook_for(**settings: Any) -> CallbackHook:
    values: dict[str, Any] = {"max_attempts": 1, "timeout_seconds": 5.0, **settings}
    return CallbackHook(CallbackSettings(**values))


# ------------------------------------------------------------------------------ default_auth


def test_a_backslash_url_never_carries_the_default_auth_to_another_port(
    receivers: tuple[CallbackReceiver, CallbackReceiver],
) -> None:
    default, other = receivers
    hook = hook_for(default_url=default.url("/x"), default_auth=DEFAULT_AUTH)
    # urlsplit reads the default receiver's port; urllib3 calls the other one.
    sneaky = f"http://127.0.0.1:{other.port}\\@127.0.0.1:{default.port}/x"
    with pytest.raises(CallbackRefused, match="backslash"):
        hook(outcome(callback_url=sneaky))
    hook.close()
    assert other.received == [] and default.received == []


@pytest.mark.parametrize(
    "template",
    [
        "http://user:pw@127.0.0.1:{other}/x",  # requests would send these as Basic auth
        "http://127.0.0.1:{default}@127.0.0.1:{other}/x",
        "http://127.0.0.1:{other}\t/x",
    ],
)
def test_userinfo_and_control_characters_are_refused_before_any_call(
    receivers: tuple[CallbackReceiver, CallbackReceiver], template: str
) -> None:
    default, other = receivers
    hook = hook_for(
        default_url=default.url("/x"), default_auth=DEFAULT_AUTH, allow_private_networks=True
    )
    with pytest.raises(CallbackRefused):
        hook(outcome(callback_url=template.format(default=default.port, other=other.port)))
    hook.close()
    assert other.received == [] and default.received == []


def test_default_auth_goes_to_the_default_url_only_not_its_whole_origin(
    receivers: tuple[CallbackReceiver, CallbackReceiver],
) -> None:
    default, _ = receivers
    hook = hook_for(default_url=default.url("/hooks/ours"), default_auth=DEFAULT_AUTH)
    hook(outcome("default"))
    hook(outcome("itself", callback_url=default.url("/hooks/ours")))
    hook(outcome("other-path", callback_url=default.url("/hooks/someone-elses")))
    hook.close()
    seen = {t: r.headers.get("Authorization") for t, r in default.by_task_id().items()}
    assert seen == {"default": BASIC, "itself": BASIC, "other-path": None}


@pytest.mark.parametrize(
    "url", ["http://u:secret-pw@127.0.0.1:1/cb", "http://169.254.169.254/", "http://a\\@b/"]
)
def test_a_default_url_no_call_would_go_to_stops_start_up(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CallbackHook(CallbackSettings(default_url=url))
    assert caught.value.key == "callback.default_url"
    assert "secret-pw" not in str(caught.value)


# -------------------------------------------------------------------------------------- SSRF


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port on 127.0.0.1 that records whether anything connected."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


def nothing_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_the_default_urls_host_is_trusted_on_its_own_port_only(
    receivers: tuple[CallbackReceiver, CallbackReceiver], listener: socket.socket
) -> None:
    default, _ = receivers
    hook = hook_for(default_url=default.url("/x"))
    hook(outcome("same-port", callback_url=default.url("/y")))
    with pytest.raises(CallbackRefused, match="loopback address"):
        hook(outcome(callback_url=f"http://127.0.0.1:{listener.getsockname()[1]}/y"))
    hook.close()
    assert list(default.by_task_id()) == ["same-port"]
    assert nothing_connected(listener)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata (name|address)"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata (name|address)"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata (name|address)"),
        ("http://[::ffff:169.254.169.254]/", "metadata (name|address)"),
        ("http://2130706433:{port}/", "numeric form"),
        ("http://0x7f.1:{port}/", "numeric form"),
        ("http://0.0.0.0:{port}/", "unspecified address"),
        ("http://[::]:{port}/", "unspecified address"),
        ("http://[::1]:{port}/", "loopback address"),
        ("http://127.0.0.1:{port}/", "loopback address"),
        ("http://10.0.0.1:{port}/", "private address"),
        ("http://localhost:{port}/", "resolves to"),  # checked where it is connected to
    ],
)
def test_internal_addresses_are_refused_without_a_connection(
    listener: socket.socket, template: str, reason: str
) -> None:
    hook = hook_for(timeout_seconds=2.0)
    url = template.format(port=listener.getsockname()[1])
    with pytest.raises(CallbackRefused, match=reason):
        hook(outcome(callback_url=url))
    hook.close()
    assert nothing_connected(listener)


def test_metadata_stays_refused_whatever_the_operator_allows() -> None:
    hook = hook_for(allow_private_networks=True, allowed_hosts=("169.254.0.0/16", "*.internal"))
    for url in ["http://169.254.169.254/", "http://metadata.google.internal/", "http://[fe80::1]/"]:
        with pytest.raises(CallbackRefused, match="never called"):
            hook(outcome(callback_url=url))
    hook.close()


def test_private_receivers_need_the_operator_to_allow_them(
    callback_receiver: CallbackReceiver,
) -> None:
    url = callback_receiver.url()
    for settings in [
        {"allow_private_networks": True},
        {"allowed_hosts": ("127.0.0.1",)},
        {"allowed_hosts": ("127.0.0.0/8",)},
    ]:
        hook = hook_for(**settings)
        hook(outcome(str(settings), callback_url=url))
        hook.close()
    assert len(callback_receiver.received) == 3


def test_allowed_hosts_restricts_and_the_checked_address_keeps_the_host_header(
    callback_receiver: CallbackReceiver,
) -> None:
    port = callback_receiver.port
    hook = hook_for(allowed_hosts=("localhost", "*.example.com"))
    hook(outcome("named", callback_url=f"http://localhost:{port}/cb"))
    for url in [f"http://127.0.0.1:{port}/cb", "http://example.org/cb", "http://example.com/"]:
        with pytest.raises(CallbackRefused, match="allowed_hosts"):
            hook(outcome(callback_url=url))
    hook.close()
    [received] = callback_receiver.received
    assert received.headers["Host"] == f"localhost:{port}"


def test_the_address_connected_to_is_the_one_checked(
    callback_receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding name server: a second look-up would answer the metadata address.
    answers = iter(["127.0.0.1", "169.254.169.254"])
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            looked_up.append(host)
            return real(next(answers), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    hook = hook_for(allowed_hosts=("rebind.example",))
    hook(outcome(callback_url=f"http://rebind.example:{callback_receiver.port}/cb"))
    hook.close()
    assert looked_up == ["rebind.example"]
    [received] = callback_receiver.received
    assert received.headers["Host"] == f"rebind.example:{callback_receiver.port}"


def test_a_refused_callback_is_a_counted_hook_failure_that_leaves_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = hook_for()
    runner = HookRunner([hook])
    task = outcome(callback_url="http://169.254.169.254/latest/meta-data/iam/")
    with caplog.at_level(logging.WARNING, logger="forwarder.hooks.base"):
        runner.run(task)
    runner.close()
    assert (runner.counts["callback"].attempts, runner.counts["callback"].failures) == (1, 1)
    assert "hook callback failed" in caplog.text and "CallbackRefused" in caplog.text
    assert task.result == {"result": "ok"} and task.succeeded
    assert issubclass(CallbackRefused, CallbackError)


@pytest.mark.integration
def test_in_a_worker_a_metadata_callback_fails_the_hook_not_the_task(
    procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"hooks": ["callback"], "callback": {"max_attempts": 1}}))
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        queue="ssrf",
        extra_args=["--config", str(config)],
    )
    client = procs.client(broker_url=redis_url, queue="ssrf")
    ids = [
        client.submit({"args": {"n": 1}, "callback_url": "http://169.254.169.254/latest/"}),
        client.submit({"args": {"n": 2}, "callback_url": callback_receiver.url()}),
    ]
    results = wait_all(client, ids, timeout=30)
    assert [results[i].status for i in ids] == ["SUCCESS", "SUCCESS"]
    assert worker.stop() == 0
    log = worker.log()
    assert log.count("CallbackRefused") >= 2, log[-3000:]
    assert re.search(r"callback attempts=2 successes=0 failures=2", log), log[-3000:]
    assert callback_receiver.received == []


@pytest.mark.integration
def test_the_gateway_refuses_a_callback_url_the_worker_would_not_call(
    procs: Processes, tmp_path: Path
) -> None:
    gateway = procs.gateway(
        data_dir=tmp_path / "data", sets=["callback.allowed_hosts=[10.1.0.0/16]"]
    )
    submit = f"{gateway.url}/v1/async-tasks"
    with requests.Session() as http:
        for url, reason in [
            ("http://169.254.169.254/latest/", "metadata (name|address)"),
            ("http://2130706433:6379/", "numeric form"),
            ("http://user:pw@10.1.2.3/", "userinfo"),
            ("http://127.0.0.1:15099\\@10.1.2.3/", "backslash"),
        ]:
            reply = http.post(submit, json={"args": 1, "callback_url": url}, timeout=10)
            assert reply.status_code == 400, (url, reply.text)
            assert re.search(reason, reply.json()["detail"]), reply.text
        allowed = http.post(
            submit, json={"args": 1, "callback_url": "http://10.1.2.3/cb"}, timeout=10
        )
        assert allowed.status_code == 200, allowed.text
