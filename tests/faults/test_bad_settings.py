"""Bad values for the worker's flags and --set keys not covered by test_config_errors.py.

Each stops ``forwarder worker`` at start with exit status 2 and one line naming the key, the
value given and what is allowed (tests/integration/test_config_errors.py covers the
environment variables, --task-visibility, an unknown file key and an http:// broker URL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults]

# (arguments, key named, value named, words of what is allowed)
CASES: dict[str, tuple[list[str], str, str, str]] = {
    "concurrency-zero": (["--concurrency", "0"], "--concurrency", "0", "positive whole number"),
    "concurrency-negative": (["--concurrency", "-3"], "--concurrency", "-3", "positive"),
    "concurrency-type": (["--concurrency", "abc"], "--concurrency", "abc", "positive"),
    "num-workers-alias": (["--num-workers", "0"], "--concurrency", "0", "positive"),
    "pool-enum": (["--pool", "threads"], "--pool", "threads", "prefork, gevent"),
    "result-backend-scheme": (
        ["--result-backend", "ftp://x"],
        "--result-backend",
        "ftp://x",
        "redis",
    ),
    "result-backend-malformed": (
        ["--result-backend", "notaurl"],
        "--result-backend",
        "notaurl",
        "URL",
    ),
    "sqs-url-scheme": (["--sqs-url", "ftp://x"], "--sqs-url", "ftp://x", "https"),
    "sqs-url-malformed": (["--sqs-url", "notaurl"], "--sqs-url", "notaurl", "URL"),
    "broker-url-no-host": (["--broker-url", "redis://"], "--broker-url", "redis://", "redis"),
    "user-port-range": (
        ["--set", "forwarder.async.user_port=70000"],
        "forwarder.async.user_port",
        "70000",
        "1 to 65535",
    ),
    "user-port-type": (
        ["--set", "forwarder.async.user_port=abc"],
        "forwarder.async.user_port",
        "abc",
        "port number",
    ),
    "model-retries-negative": (
        ["--set", "worker.model_retries=-1"],
        "worker.model_retries",
        "-1",
        "0 or more",
    ),
    "backoff-negative": (
        ["--set", "worker.retry_backoff_max_seconds=-1"],
        "worker.retry_backoff_max_seconds",
        "-1",
        "positive number",
    ),
    "unwrap-bool": (
        ["--set", "forwarder.async.model_engine_unwrap=maybe"],
        "forwarder.async.model_engine_unwrap",
        "maybe",
        "true or false",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    args, key, value, allowed = CASES[case]
    env = {
        name: v
        for name, v in os.environ.items()
        if not name.startswith(("FORWARDER_", "CELERY_WORKER_")) and name != "AWS_ENDPOINT_URL"
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "forwarder", "worker", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert key in lines[0] and value in lines[0] and allowed in lines[0], lines[0]
