"""The settings schema: one table, and the flags, variables and masked document derived from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.cli.commands import build_parser
from forwarder.cli.flags import settings_from
from forwarder.config import schema
from forwarder.config.hooks import CallbackSettings, HookSettings, MtlsAuth
from forwarder.config.schema import SETTINGS, environment_variables, flags_for, masked_document
from forwarder.config.settings import Settings, load_settings
from forwarder.errors import ConfigError

# A command of each family, with the arguments it needs besides the flags.
COMMANDS = {
    "worker": ["worker"],
    "gateway": ["gateway"],
    "tasks": ["get", "task-1"],
    "dead-letter": ["dead-letter", "list"],
}
# A value each flag accepts (as typed on a command line), and the value it gives its field.
FLAG_VALUES: dict[str, tuple[str, object]] = {
    "--queue": ("q-flag", "q-flag"),
    "--concurrency": ("7", 7),
    "--pool": ("gevent", "gevent"),
    "--broker-url": ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"),
    "--result-backend": ("file:///tmp/results", "file:///tmp/results"),
    "--sqs-url": ("https://sqs.local/1/q", "https://sqs.local/1/q"),
    "--broker-type": ("SQS", "sqs"),
    "--backend-protocol": ("s3", "s3"),
    "--data-dir": ("/tmp/flag-data", Path("/tmp/flag-data")),
    "--task-visibility": ("VISIBILITY_1H", "VISIBILITY_1H"),
    "--events": ("true", True),
    "--hostname": ("gpu-1@%h", "gpu-1@%h"),
    "--log-level": ("DEBUG", "DEBUG"),
    "--log-format": ("text", "text"),
    "--library-log-level": ("DEBUG", "DEBUG"),
    "--metrics-port": ("9100", 9100),
    "--metrics-host": ("127.0.0.1", "127.0.0.1"),
    "--tracing": ("otel", "otel"),
    "--max-deliveries": ("9", 9),
    "--dead-letter-queue": ("dl-flag", "dl-flag"),
    "--host": ("0.0.0.0", "0.0.0.0"),
    "--port": ("0", 0),
    "--allow-anonymous": ("true", True),
    "--gateway-url": ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    "--token": ("token-0123456789abcdef", "token-0123456789abcdef"),
}
# What a flag needs besides itself to make whole settings: more arguments, and the environment.
SQS = ["--sqs-url", "https://sqs.local/1/q"]
FLAG_NEEDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "--sqs-url": (["--result-backend", "redis://127.0.0.1:6379/1"], {}),
    "--broker-type": (SQS, {"S3_BUCKET": "results"}),
    "--backend-protocol": (["--broker-type", "sqs", *SQS], {"S3_BUCKET": "results"}),
}


pytestmark = pytest.mark.usefixtures("no_settings_environment")


def field_value(settings: Settings, path: str) -> Any:
    value: Any = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


def leaf_fields(cls: type, prefix: str = "") -> set[str]:
    """Every field path below ``cls`` that holds a value rather than another settings class."""
    paths: set[str] = set()
    for item in dataclasses.fields(cls):
        path = f"{prefix}{item.name}"
        default = item.default_factory() if callable(item.default_factory) else item.default
        if dataclasses.is_dataclass(default):
            paths |= leaf_fields(type(default), f"{path}.")
        else:
            paths.add(path)
    return paths


# ------------------------------------------------------------------------------------- the table


def test_every_settings_field_is_filled_by_exactly_one_entry() -> None:
    filled = [setting.fills for setting in SETTINGS]
    assert len(filled) == len(set(filled))
    assert set(filled) == leaf_fields(Settings) - {"sources"}


def test_file_keys_flags_and_variables_are_each_used_once() -> None:
    for names in (
        [setting.file_key for setting in SETTINGS],
        [setting.flag for setting in SETTINGS if setting.flag],
        list(environment_variables()),
    ):
        assert len(names) == len(set(names)), names


def test_every_flag_has_help_and_a_command_family() -> None:
    for setting in SETTINGS:
        if setting.flag:
            assert setting.help, setting.flag
            assert set(setting.commands) <= set(schema.COMMAND_FAMILIES), setting.flag
            assert setting.commands, setting.flag
        else:
            assert not setting.commands and not setting.aliases, setting.file_key


def test_the_flag_values_here_cover_every_flag() -> None:
    assert set(FLAG_VALUES) == {setting.flag for setting in SETTINGS if setting.flag}


def test_environment_variables_are_the_tables() -> None:
    variables = environment_variables()
    assert variables == tuple(name for setting in SETTINGS for name in setting.env)
    # model-engine's, the forwarder's own and those read for the libraries' sake.
    for name in (
        "CELERY_WORKER_POOL",
        "CELERY_WORKER_MAX_TASKS_PER_CHILD",
        "FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS",
        "SERIALIZE_RESULTS_AS_STRING",
        "FORWARDER_BROKER_URL",
        "FORWARDER_GATEWAY_TOKENS",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "FORWARDER_GATEWAY_URL",
        "FORWARDER_GATEWAY_TOKEN",
    ):
        assert name in variables


# ------------------------------------------------------------------------------------- the flags


@pytest.mark.parametrize("family", sorted(COMMANDS))
def test_each_command_takes_exactly_its_familys_flags(family: str) -> None:
    parser = build_parser()
    taken = {setting.flag for setting in flags_for(family)}
    for setting in SETTINGS:
        if not setting.flag:
            continue
        given, _ = FLAG_VALUES[setting.flag]
        argv = [*COMMANDS[family], setting.flag, given]
        if setting.flag in taken:
            assert getattr(parser.parse_args(argv), setting.dest) == given
        else:
            with pytest.raises(SystemExit):
                parser.parse_args(argv)


@pytest.mark.parametrize(
    ("family", "flag"),
    [(family, s.flag) for family in sorted(COMMANDS) for s in flags_for(family)],
)
def test_a_flag_on_the_command_line_fills_its_field(
    family: str, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    setting = next(s for s in SETTINGS if s.flag == flag)
    given, expected = FLAG_VALUES[flag]
    extra, env = FLAG_NEEDS.get(flag, ([], {}))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([*COMMANDS[family], flag, given, *extra])
    settings = settings_from(args)
    assert field_value(settings, setting.fills) == expected
    assert settings.sources[setting.fills] == flag


def test_an_alias_fills_the_same_field() -> None:
    args = build_parser().parse_args(["worker", "--num-workers", "3"])
    assert settings_from(args).worker.concurrency == 3
    args = build_parser().parse_args(["worker", "-n", "second@%h"])
    assert settings_from(args).worker.hostname == "second@%h"


def test_events_given_alone_turns_them_on_and_they_are_off_by_default() -> None:
    parser = build_parser()
    assert settings_from(parser.parse_args(["worker", "--events"])).worker.events is True
    assert settings_from(parser.parse_args(["worker", "--events", "false"])).worker.events is False
    assert settings_from(parser.parse_args(["worker"])).worker.events is False


def test_the_help_names_the_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--pool POOL prefork (default) or gevent (env CELERY_WORKER_POOL)" in shown
    assert "(env FORWARDER_BROKER_URL)" in shown


# ------------------------------------------------------------------------ the masked document


def test_the_masked_document_holds_every_file_key() -> None:
    document = masked_document(load_settings(env={}))
    for setting in SETTINGS:
        holder: Any = document
        *parents, leaf = setting.file_key.split(".")
        for name in parents:
            holder = holder[name]
        assert leaf in holder, setting.file_key


def test_the_masked_document_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    settings = load_settings(
        env={"AWS_REGION": "eu-west-1", "CURL_CA_BUNDLE": "/etc/ca.pem"},
        overrides=["hooks=[callback]", "endpoint.labels={team: ml}", "logging.path=/tmp/r.jsonl"],
        flags={"--data-dir": str(tmp_path), "--gateway-url": "http://127.0.0.1:8000"},
    )
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(masked_document(settings), sort_keys=False))
    assert load_settings(printed, env={}) == settings


SECRETS = {
    "password": "hunter2-password",
    "signing": "whsec_c2lnbmluZy1zZWNyZXQ=",
    "gateway-token": "gateway-token-0123456789",
    "client-token": "client-token-0123456789",
}


def test_every_secret_is_masked() -> None:
    settings = load_settings(
        env={"FORWARDER_GATEWAY_TOKENS": SECRETS["gateway-token"]},
        overrides=[
            f"callback.default_auth={{kind: basic, username: ana, password: {SECRETS['password']}}}",
            f"callback.signing_secret={SECRETS['signing']}",
            f"client.gateway_token={SECRETS['client-token']}",
        ],
    )
    document = masked_document(settings)
    text = yaml.safe_dump(document)
    for secret in SECRETS.values():
        assert secret not in text
    assert document["callback"]["default_auth"] == {
        "kind": "basic",
        "username": "ana",
        "password": "***",
    }
    assert document["callback"]["signing_secret"] == "***"
    assert document["gateway"]["auth_tokens"] == ["***"]
    assert document["client"]["gateway_token"] == "***"


def test_mtls_credentials_are_masked() -> None:
    auth = MtlsAuth(cert="-----BEGIN CERTIFICATE-----", key="-----BEGIN PRIVATE KEY-----")
    hooks = HookSettings(callback=CallbackSettings(default_auth=auth))
    shown = masked_document(dataclasses.replace(Settings(), hooks=hooks))["callback"]
    assert shown["default_auth"] == {"kind": "mtls", "cert": "***", "key": "***"}


def test_urls_are_shown_without_their_password() -> None:
    url = "redis://user:url-password@127.0.0.1:6379/0"
    worker = masked_document(load_settings(env={}, flags={"--broker-url": url}))["worker"]
    assert worker["broker_url"] == "redis://user:***@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("overrides", "env", "key"),
    [
        (["callback.signing_secret=[not, 3]"], {}, "callback.signing_secret"),
        (["client.gateway_token=''"], {}, "client.gateway_token"),
        ([], {"FORWARDER_GATEWAY_TOKENS": "too-short"}, "FORWARDER_GATEWAY_TOKENS"),
    ],
)
def test_a_bad_secret_is_named_but_not_shown(
    overrides: list[str], env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env, overrides=overrides)
    assert raised.value.key == key
    assert "'(not shown)'" in str(raised.value)
    assert "too-short" not in str(raised.value)
