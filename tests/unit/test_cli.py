"""The command line: check-config's output, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.cli.commands import main
from forwarder.config.settings import load_settings

# The CLI reads the process environment: keep the caller's settings out of these tests.
pytestmark = pytest.mark.usefixtures("no_settings_environment")


def test_check_config_prints_a_file_that_loads_back_to_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "check-config",
        "--data-dir", str(tmp_path),
        "--pool", "gevent",
        "--concurrency", "16",
        "--task-visibility", "VISIBILITY_1H",
        "--set", "forwarder.async.user_port=8080",
        "--set", "worker.model_retries=3",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "# broker: embedded" in printed
    assert "# visibility timeout: 3600 s" in printed
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    expected = load_settings(
        env={},
        overrides=["forwarder.async.user_port=8080", "worker.model_retries=3"],
        flags={
            "--data-dir": str(tmp_path),
            "--pool": "gevent",
            "--concurrency": "16",
            "--task-visibility": "VISIBILITY_1H",
        },
    )
    assert load_settings(config, env={}) == expected


def test_check_config_masks_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    url = "redis://user:s3cret-pw@127.0.0.1:6379/0"
    assert main(["check-config", "--broker-url", url, "--result-backend", url]) == 0
    printed = capsys.readouterr().out
    assert "s3cret-pw" not in printed
    assert "redis://user:***@127.0.0.1:6379/0" in printed


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["check-config", "--concurrency", "zero"], "--concurrency='zero'"),
        (["check-config", "--set", "worker.colour=blue"], "worker.colour='blue'"),
        (["submit", "[1, 2]"], "payload='[1, 2]'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"forwarder: invalid {named}; allowed: ")
    assert error.count("\n") == 1


def test_check_config_round_trips_and_masks_the_hook_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hooks.yaml"
    config.write_text(
        "hooks: [logging, callback]\n"
        "endpoint: {id: end_1, labels: {team: ml}}\n"
        "callback: {default_url: 'http://127.0.0.1:9/cb', signing_secret: whsec_c2VjcmV0,\n"
        "           default_auth: {kind: basic, username: alice, password: hunter2}}\n"
        "logging: {sink: file, path: /tmp/records.jsonl}\n"
    )
    assert main(["check-config", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed
    assert "whsec_c2VjcmV0" not in printed
    assert "username: alice" in printed
    unmasked = load_settings(config, env={}).hooks
    reloaded_file = tmp_path / "printed.yaml"
    reloaded_file.write_text(printed)
    reloaded = load_settings(reloaded_file, env={}).hooks
    assert reloaded.names == unmasked.names == ("logging", "callback")
    assert reloaded.endpoint == unmasked.endpoint
    assert reloaded.logging == unmasked.logging
