"""The ``gateway`` settings section, and the CLI's gateway, submit, get and cancel options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from forwarder.cli import commands as cli
from forwarder.cli import tasks as cli_tasks
from forwarder.cli.flags import settings_from
from forwarder.config.gateway import GatewaySettings
from forwarder.config.settings import load_settings
from forwarder.errors import ConfigError

TOKEN_A = "token-aaaaaaaaaaaaaaaa"
TOKEN_B = "token-bbbbbbbbbbbbbbbb"


pytestmark = pytest.mark.usefixtures("no_settings_environment")


def _config(tmp_path: Path, gateway: object) -> Path:
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump({"gateway": gateway}))
    return path


def test_defaults() -> None:
    assert load_settings(env={}).gateway == GatewaySettings(
        host="127.0.0.1",
        port=8000,
        max_body_bytes=1_048_576,
        auth_tokens=(),
        default_ttl_seconds=None,
        default_timeout_seconds=None,
        idempotency_retention_seconds=86400.0,
    )


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        {
            "host": "0.0.0.0",
            "port": 9000,
            "max_body_bytes": 2048,
            "auth_tokens": [TOKEN_A],
            "default_ttl_seconds": 60,
            "default_timeout_seconds": 0,  # 0: no limit
            "idempotency_retention_seconds": 3600,
        },
    )
    from_file = load_settings(config, env={}).gateway
    assert (from_file.host, from_file.port, from_file.max_body_bytes) == ("0.0.0.0", 9000, 2048)
    assert from_file.auth_tokens == (TOKEN_A,)
    assert (from_file.default_ttl_seconds, from_file.default_timeout_seconds) == (60.0, None)
    assert from_file.idempotency_retention_seconds == 3600.0
    env = {
        "FORWARDER_GATEWAY_PORT": "9100",
        "FORWARDER_GATEWAY_TOKENS": f"{TOKEN_B}, {TOKEN_A},{TOKEN_B}",
    }
    from_env = load_settings(config, env=env).gateway
    assert (from_env.port, from_env.auth_tokens) == (9100, (TOKEN_B, TOKEN_A))
    flagged = load_settings(config, env=env, flags={"--port": "0", "--host": "localhost"}).gateway
    assert (flagged.host, flagged.port) == ("localhost", 0)


def test_set_overrides_reach_the_section() -> None:
    gateway = load_settings(env={}, overrides=["gateway.max_body_bytes=10"]).gateway
    assert gateway.max_body_bytes == 10


@pytest.mark.parametrize(
    ("overrides", "env", "flags", "key"),
    [
        (["gateway.port=70000"], {}, {}, "gateway.port"),
        ([], {"FORWARDER_GATEWAY_PORT": "http"}, {}, "FORWARDER_GATEWAY_PORT"),
        ([], {}, {"--port": "-1"}, "--port"),
        (["gateway.host=http://x"], {}, {}, "gateway.host"),
        (["gateway.max_body_bytes=0"], {}, {}, "gateway.max_body_bytes"),
        (["gateway.default_ttl_seconds=-1"], {}, {}, "gateway.default_ttl_seconds"),
        (["gateway.default_timeout_seconds=soon"], {}, {}, "gateway.default_timeout_seconds"),
        (["gateway.idempotency_retention_seconds=0"], {}, {}, "gateway.idempotency_retention_seconds"),
        (["gateway.bogus=1"], {}, {}, "gateway.bogus"),
        (["gateway=[1]"], {}, {}, "gateway"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_key(
    overrides: list[str], env: dict[str, str], flags: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env, overrides=overrides, flags=flags)
    assert raised.value.key == key
    assert "allowed" in str(raised.value)


def test_unknown_keys_list_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="allowed: host, port, max_body_bytes, auth_tokens"):
        load_settings(env={}, overrides=["gateway.tokens=[x]"])


@pytest.mark.parametrize(
    ("env", "overrides"),
    [
        ({"FORWARDER_GATEWAY_TOKENS": "short-secret"}, []),  # under 16 characters
        ({"FORWARDER_GATEWAY_TOKENS": "nön-ascii-0123456789abc"}, []),
        ({}, ["gateway.auth_tokens=[has space inside-0123456789]"]),
        ({}, [f"gateway.auth_tokens=[{TOKEN_A}, 12345678901234567890]"]),
    ],
)
def test_a_bad_token_is_refused_without_being_shown(
    env: dict[str, str], overrides: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env, overrides=overrides)
    message = str(raised.value)
    assert "(not shown)" in message
    for secret in ("short-secret", "has space", "nön", TOKEN_A, "1234567890"):
        assert secret not in message


def test_tokens_stay_out_of_repr() -> None:
    settings = load_settings(env={"FORWARDER_GATEWAY_TOKENS": TOKEN_A})
    assert TOKEN_A not in repr(settings)


def test_other_unknown_flags_are_still_refused() -> None:
    with pytest.raises(ConfigError, match="not a settings flag"):
        load_settings(env={}, flags={"--bogus": "1"})


# ------------------------------------------------------------------------------------- CLI


def test_check_config_prints_the_gateway_section_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORWARDER_GATEWAY_TOKENS", f"{TOKEN_A},{TOKEN_B}")
    assert cli.main(["check-config", "--set", "gateway.default_ttl_seconds=30"]) == 0
    printed = capsys.readouterr().out
    assert TOKEN_A not in printed and TOKEN_B not in printed
    gateway = yaml.safe_load(printed)["gateway"]
    assert gateway["auth_tokens"] == ["***", "***"]
    assert gateway["default_ttl_seconds"] == 30.0
    assert gateway["port"] == 8000


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["gateway", "--port", "70000"], "--port"),
        (["submit", "{}", "--ttl", "0"], "--ttl"),
        (["submit", "{}", "--timeout", "-2"], "--timeout"),
        (["submit", "{}", "--gateway-url", "ftp://example.com"], "--gateway-url"),
        (["get", "t", "--gateway-url", "http://127.0.0.1:1", "--broker-url", "redis://x/0"], "--broker-url"),
        (["cancel", "t", "--gateway-url", "http://127.0.0.1:1", "--queue", "q"], "--queue"),
        (["submit", "{}", "--gateway-url", "http://127.0.0.1:1", "--legacy-task-name"], "--legacy-task-name"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_one_line(
    argv: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"forwarder: invalid {key}=")


def test_a_bad_gateway_url_from_the_environment_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORWARDER_GATEWAY_URL", "127.0.0.1:8000")
    assert cli.main(["get", "t"]) == 2
    assert capsys.readouterr().err.startswith("forwarder: invalid FORWARDER_GATEWAY_URL=")


def test_the_gateway_url_from_the_environment_gives_way_to_broker_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORWARDER_GATEWAY_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("FORWARDER_GATEWAY_TOKEN", TOKEN_A)
    assert gateway_target("get", "t") == ("http://127.0.0.1:8000", TOKEN_A)
    assert gateway_target("get", "t", "--broker-url", "redis://h/0") is None
    assert gateway_target("get", "t", "--set", "worker.queue=q") is None
    assert gateway_target("get", "t", "--token", TOKEN_B) == ("http://127.0.0.1:8000", TOKEN_B)


def test_the_gateway_url_from_the_file_gives_way_to_broker_flags_only(tmp_path: Path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(f"client: {{gateway_url: 'http://127.0.0.1:9', gateway_token: {TOKEN_A}}}")
    with_file = ("get", "t", "--config", str(config))
    assert gateway_target(*with_file) == ("http://127.0.0.1:9", TOKEN_A)
    assert gateway_target(*with_file, "--set", "worker.queue=q") == ("http://127.0.0.1:9", TOKEN_A)
    assert gateway_target(*with_file, "--queue", "q") is None
    overridden = gateway_target(*with_file, "--token", TOKEN_B)
    assert overridden == ("http://127.0.0.1:9", TOKEN_B)


def gateway_target(*argv: str) -> tuple[str, str | None] | None:
    args = cli.build_parser().parse_args(argv)
    return cli_tasks._gateway_target(args, settings_from(args))


def test_without_fastapi_the_gateway_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("forwarder.gateway.app", "forwarder.gateway.server"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes "import fastapi" fail
    assert cli.main(["gateway", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'inference-forwarder[gateway]'" in err
    assert err.count("\n") == 1
