"""Hook settings, the hook runner's isolation, the logging hook's record and the file sink."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.config.hooks import (
    BasicAuth,
    EndpointInfo,
    HookSettings,
    MtlsAuth,
    parse_callback_auth,
)
from forwarder.config.masking import masked_request
from forwarder.config.settings import load_settings
from forwarder.errors import ConfigError
from forwarder.hooks import Hook, HookRunner, TaskOutcome, build_hooks
from forwarder.hooks.logging import LoggingHook, build_record
from forwarder.hooks.sinks.base import Sink
from forwarder.hooks.sinks.file import FileSink

ISSUE_EXAMPLE = """\
hooks: [callback, logging]
endpoint: {id: end_123, name: my-model, type: async, bundle_id: bun_456, labels: {team: ml}}
callback: {default_url: https://example.invalid/cb, default_auth: {kind: basic, username: u, password: p}}
logging: {sink: firehose, stream_name: my-stream, role_arn: arn:aws:iam::123456789012:role/log, region: us-east-1}
"""
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def settings_from(text: str, *overrides: str, tmp_path: Path) -> HookSettings:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path, overrides, env={}).hooks


# ------------------------------------------------------------------------------------ settings


def test_the_documented_example_loads(tmp_path: Path) -> None:
    hooks = settings_from(ISSUE_EXAMPLE, tmp_path=tmp_path)
    assert hooks.names == ("callback", "logging")
    assert hooks.endpoint == EndpointInfo(
        id="end_123", name="my-model", type="async", bundle_id="bun_456", labels={"team": "ml"}
    )
    assert hooks.callback.default_url == "https://example.invalid/cb"
    assert hooks.callback.default_auth == BasicAuth(username="u", password="p")
    assert hooks.logging.sink == "firehose"
    assert hooks.logging.stream_name == "my-stream"
    assert hooks.logging.role_arn == "arn:aws:iam::123456789012:role/log"
    assert hooks.logging.region == "us-east-1"


def test_no_hooks_by_default() -> None:
    assert load_settings(env={}).hooks == HookSettings()


def test_hooks_may_be_a_comma_separated_override(tmp_path: Path) -> None:
    assert settings_from("", "hooks=logging, callback", tmp_path=tmp_path).names == (
        "logging",
        "callback",
    )


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("hooks=[callback, billing]", "hooks", "one of callback, logging"),
        ("hooks=7", "hooks", "a list of hook names"),
        ("logging.sink=kafka", "logging.sink", "one of file, firehose"),
        ("logging.flush_interval_seconds=0", "logging.flush_interval_seconds", "positive"),
        ("logging.colour=red", "logging.colour", "unknown key"),
        ("callback.default_url=ftp://host/cb", "callback.default_url", "http"),
        ("callback.max_attempts=0", "callback.max_attempts", "positive"),
        ("callback.timeout_seconds=soon", "callback.timeout_seconds", "number"),
        ("endpoint.labels=[a]", "endpoint.labels", "mapping of label names"),
        ("endpoint.owner=me", "endpoint.owner", "unknown key"),
        ("callback=5", "callback", "a mapping of settings"),
    ],
)
def test_bad_hook_settings_name_the_key(
    override: str, key: str, allowed: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from(ISSUE_EXAMPLE, override, tmp_path=tmp_path)
    assert raised.value.key == key
    assert allowed in raised.value.allowed


def test_firehose_sink_needs_a_stream_name(tmp_path: Path) -> None:
    document = yaml.safe_load(ISSUE_EXAMPLE)
    del document["logging"]["stream_name"]
    with pytest.raises(ConfigError) as raised:
        settings_from(yaml.safe_dump(document), tmp_path=tmp_path)
    assert raised.value.key == "logging.stream_name"


def test_backoff_cap_below_the_base_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callback\.backoff_max_seconds"):
        settings_from("callback: {backoff_seconds: 2, backoff_max_seconds: 1}", tmp_path=tmp_path)


def test_mtls_auth_takes_pem_contents() -> None:
    auth = parse_callback_auth({"kind": "mtls", "cert": PEM_CERT, "key": PEM_KEY}, "k")
    assert auth == MtlsAuth(cert=PEM_CERT, key=PEM_KEY)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"kind": "oauth"}, "k"),
        ("basic", "k"),
        ({"kind": "basic", "username": "u"}, "k.password"),
        ({"kind": "basic", "username": "", "password": "p"}, "k.username"),
        ({"kind": "basic", "username": "u", "password": "p", "token": "t"}, "k.token"),
        ({"kind": "mtls", "cert": "/etc/cert.pem", "key": PEM_KEY}, "k.cert"),
    ],
)
def test_bad_callback_auth_names_the_field(value: object, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_callback_auth(value, "k")
    assert raised.value.key == key


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    hooks = settings_from(
        ISSUE_EXAMPLE, "callback.signing_secret=whsec_c2VjcmV0LXZhbHVl", tmp_path=tmp_path
    )
    text = repr(hooks) + repr(MtlsAuth(cert=PEM_CERT, key=PEM_KEY))
    for secret in ("password='p'", "whsec_", "MIIE", "MIIB"):
        assert secret not in text
    with pytest.raises(ConfigError) as raised:
        parse_callback_auth({"kind": "mtls", "cert": "sekrit-not-pem", "key": PEM_KEY}, "k")
    assert "sekrit" not in str(raised.value)


# -------------------------------------------------------------------------------------- runner


class Recording(Hook):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name  # type: ignore[misc]  # per instance here, a class constant in real hooks
        self.fail = fail
        self.seen: list[str] = []
        self.closed = False

    def __call__(self, outcome: TaskOutcome) -> None:
        self.seen.append(outcome.task_id)
        if self.fail:
            raise RuntimeError("receiver down")

    def close(self) -> None:
        self.closed = True
        if self.fail:
            raise RuntimeError("cannot flush")


def outcome(task_id: str = "t1", **changes: Any) -> TaskOutcome:
    values: dict[str, Any] = {
        "task_id": task_id,
        "queue": "inference",
        "request": {"args": {"x": 1}},
        "succeeded": True,
        "result": {"result": '{"x": 1}', "status_code": 200},
    }
    return TaskOutcome(**{**values, **changes})


def test_a_failing_hook_is_counted_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = Recording("callback", fail=True), Recording("logging")
    runner = HookRunner([first, second])
    with caplog.at_level("WARNING", logger="forwarder.hooks.base"):
        runner.run(outcome("t1"))
        runner.run(outcome("t2"))
    assert first.seen == second.seen == ["t1", "t2"]
    assert (runner.counts["callback"].attempts, runner.counts["callback"].failures) == (2, 2)
    assert (runner.counts["logging"].attempts, runner.counts["logging"].successes) == (2, 2)
    assert "hook callback failed for task t2 (2 failure(s) so far): RuntimeError" in caplog.text


def test_close_reaches_every_hook_even_after_one_fails() -> None:
    first, second = Recording("callback", fail=True), Recording("logging")
    HookRunner([first, second]).close()
    assert first.closed and second.closed


def test_response_bodies() -> None:
    assert outcome("t9").response_body() == {
        "result": '{"x": 1}',
        "status_code": 200,
        "task_id": "t9",
    }
    failed = outcome("t9", succeeded=False, result=None, error="PayloadError: bad")
    assert failed.response_body() == {
        "task_id": "t9",
        "status": "FAILURE",
        "error": "PayloadError: bad",
    }
    bare = outcome("t9", result=[1, 2])
    assert bare.response_body() == {"result": [1, 2], "task_id": "t9"}


def test_build_hooks_follows_the_listed_order(tmp_path: Path) -> None:
    settings = load_settings(
        overrides=["hooks=[logging, callback]", f"logging.path={tmp_path / 'r.jsonl'}"], env={}
    )
    runner = build_hooks(settings)
    assert [hook.name for hook in runner.hooks] == ["logging", "callback"]
    assert not build_hooks(load_settings(env={}))


# ------------------------------------------------------------------------ logging hook + file sink

ENDPOINT = EndpointInfo(
    id="end_1", name="m", type="async", bundle_id="bun_1", labels={"team": "ml"}
)


def test_record_has_model_engine_fields() -> None:
    request = {"args": {"x": 1}, "callback_url": "http://127.0.0.1:1/cb"}
    record = build_record(
        outcome("t1", request=request), ENDPOINT, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert record == {
        "EMITTED_AT": "2026-01-02T03:04:05",
        "REQUEST_BODY": json.dumps(request),
        "RESPONSE_BODY": {"result": '{"x": 1}', "status_code": 200, "task_id": "t1"},
        "ENDPOINT_ID": "end_1",
        "ENDPOINT_NAME": "m",
        "ENDPOINT_TYPE": "async",
        "BUNDLE_ID": "bun_1",
        "LABELS": {"team": "ml"},
    }


def test_callback_credentials_are_masked_in_the_record() -> None:
    request = {
        "args": {},
        "callback_auth": {"kind": "basic", "username": "alice", "password": "hunter2"},
    }
    record = build_record(outcome(request=request), ENDPOINT)
    assert "hunter2" not in json.dumps(record)
    assert json.loads(record["REQUEST_BODY"])["callback_auth"] == {
        "kind": "basic",
        "username": "alice",
        "password": "***",
    }
    mtls = {"callback_auth": {"kind": "mtls", "cert": PEM_CERT, "key": PEM_KEY}}
    assert masked_request(mtls)["callback_auth"] == {"kind": "mtls", "cert": "***", "key": "***"}
    assert masked_request([1, 2]) == [1, 2]


class ListSink(Sink):
    name = "list"

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def put(self, record: Any) -> None:
        self.records.append(dict(record))


def test_logging_hook_puts_one_record_per_outcome() -> None:
    sink = ListSink()
    hook = LoggingHook(ENDPOINT, sink)
    hook(outcome("a"))
    hook(outcome("b", succeeded=False, result=None, error="ModelServerTimeout: slow"))
    assert [r["RESPONSE_BODY"]["task_id"] for r in sink.records] == ["a", "b"]
    assert sink.records[1]["RESPONSE_BODY"]["error"] == "ModelServerTimeout: slow"


def test_file_sink_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "records.jsonl"
    sink = FileSink(path)
    sink.put({"n": 1})
    sink.put({"n": 2, "when": datetime(2026, 1, 1, tzinfo=UTC)})
    sink.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1, 2]
    assert sink.counts.sent == 2
    assert path.stat().st_mode & 0o777 == 0o600


def test_file_sink_opens_its_own_descriptor_after_fork(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    sink = FileSink(path)
    sink.put({"who": "parent"})
    pid = os.fork()
    if pid == 0:  # the child: write, close, and leave without running pytest's teardown
        try:
            sink.put({"who": "child"})
            sink.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    sink.put({"who": "parent again"})  # the child's close must not have closed ours
    sink.close()
    assert [json.loads(line)["who"] for line in path.read_text().splitlines()] == [
        "parent",
        "child",
        "parent again",
    ]
