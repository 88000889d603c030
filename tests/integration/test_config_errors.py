"""A value that is not allowed stops the worker at start-up: exit 2 and one line on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forwarder.devtools.localrun import free_port
from support.env import base_env

pytestmark = [pytest.mark.integration]

# id -> (environment, extra command-line arguments, key, value, one allowed value)
CASES: dict[str, tuple[dict[str, str], list[str], str, str, str]] = {
    "pool-threads": (
        {"CELERY_WORKER_POOL": "threads"},
        [],
        "CELERY_WORKER_POOL",
        "threads",
        "gevent",
    ),
    "max-tasks-zero": (
        {"CELERY_WORKER_MAX_TASKS_PER_CHILD": "0"},
        [],
        "CELERY_WORKER_MAX_TASKS_PER_CHILD",
        "0",
        "positive whole number",
    ),
    "max-tasks-abc": (
        {"CELERY_WORKER_MAX_TASKS_PER_CHILD": "abc"},
        [],
        "CELERY_WORKER_MAX_TASKS_PER_CHILD",
        "abc",
        "positive whole number",
    ),
    "firehose-negative": (
        {"FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS": "-1"},
        [],
        "FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS",
        "-1",
        "positive whole number",
    ),
    "serialize-yes": (
        {"SERIALIZE_RESULTS_AS_STRING": "yes"},
        [],
        "SERIALIZE_RESULTS_AS_STRING",
        "yes",
        "true or false",
    ),
    "task-visibility": (
        {},
        ["--task-visibility", "VISIBILITY_2H"],
        "--task-visibility",
        "VISIBILITY_2H",
        "VISIBILITY_24H",
    ),
    "unknown-file-key": (
        {},
        ["--config", "{config}"],
        "forwarder.async.user_prot",
        "5005",
        "user_port",
    ),
    "broker-url-http": ({}, ["--broker-url", "http://x"], "--broker-url", "http://x", "redis"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_setting_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    env_values, args, key, value, allowed = CASES[case]
    config = tmp_path / "forwarder.yaml"
    config.write_text("forwarder:\n  async:\n    user_prot: 5005\n", encoding="utf-8")
    args = [arg.replace("{config}", str(config)) for arg in args]
    if "--broker-url" not in args:
        args += ["--data-dir", str(tmp_path / "data")]
    # Were the value accepted, the worker would wait for this (closed) port until the timeout.
    args += ["--set", f"forwarder.async.user_port={free_port()}"]
    proc = subprocess.run(
        [sys.executable, "-m", "forwarder", "worker", *args],
        env=base_env(XDG_DATA_HOME=str(tmp_path / "xdg"), **env_values),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), proc.stderr
    line = lines[0]
    assert line.startswith(f"forwarder: invalid {key}="), line
    given, sep, what_is_allowed = line.partition("; allowed: ")
    assert sep, line
    assert value in given, line
    assert allowed in what_is_allowed, line
    assert proc.stdout == "", proc.stdout
