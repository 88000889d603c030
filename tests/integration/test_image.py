"""The container image: built from the Dockerfile, it checks its settings and runs a worker.

Needs a container engine that answers (``docker info``) and the base image already present:
the test pulls nothing. Without either it is skipped, saying which is missing.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TIMEOUT = 900


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _base_image() -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile names its base image in ARG PYTHON_IMAGE"
    return match.group(1)


def _engine_or_skip() -> None:
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except FileNotFoundError:
        pytest.skip("no container runtime: the docker command is not installed")
    except subprocess.TimeoutExpired:
        pytest.skip("no container engine: `docker info` did not answer within 20 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no reason given"])[-1]
        pytest.skip(f"no running container engine: `docker info` failed: {reason}")
    base = _base_image()
    if _docker("image", "inspect", base).returncode != 0:
        pytest.skip(f"base image {base} is not present locally (this test pulls nothing)")


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    _engine_or_skip()
    tag = f"inference-forwarder:test-{uuid.uuid4().hex[:12]}"
    built = _docker("build", "--tag", tag, str(ROOT), timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        yield tag
    finally:
        _docker("image", "rm", "--force", tag)


def test_the_image_checks_its_settings_as_a_non_root_user_without_compilers(image: str) -> None:
    checked = _docker("run", "--rm", image, "check-config")
    assert checked.returncode == 0, checked.stderr
    assert "# broker: embedded" in checked.stdout
    user = _docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert user.returncode == 0 and user.stdout.strip() != "0", user
    compilers = _docker(
        "run", "--rm", "--entrypoint", "sh", image, "-c", "command -v gcc cc c++ make"
    )
    assert compilers.stdout.strip() == "", f"build tools in the final image: {compilers.stdout}"
    extras = _docker(
        "run", "--rm", "--entrypoint", "python", image, "-c", "import gevent, boto3, pycurl"
    )
    assert extras.returncode == 0, extras.stderr


@pytest.mark.timeout(240)
def test_a_worker_in_the_image_runs_a_task_and_stops_warmly_on_sigterm(
    image: str, procs: Any, redis_url: str
) -> None:
    echo = procs.echo()
    name = f"forwarder-test-{uuid.uuid4().hex[:12]}"
    started = _docker(
        "run", "--detach", "--name", name, "--network", "host", image,
        "worker", "--broker-url", redis_url, "--queue", "image", "--pool", "gevent",
        "--concurrency", "2",
        "--set", "forwarder.async.user_hostname=127.0.0.1",
        "--set", f"forwarder.async.user_port={echo.port}",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        _wait_for_log(name, r"celery@\S+ ready\.", timeout=60)
        client = procs.client(broker_url=redis_url, queue="image")
        result = client.wait(client.submit({"args": {"prompt": "hello"}}), timeout=30)
        assert result.status == "SUCCESS", result
        assert result.result == {"result": '{"prompt": "hello"}', "status_code": 200}
        stopped = _docker("stop", "--time", "30", name, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        state = _docker("inspect", "--format", "{{.State.ExitCode}}", name)
        assert state.stdout.strip() == "0", _logs(name)
        assert "Warm shutdown" in _logs(name)
    finally:
        _docker("rm", "--force", name)


def _logs(name: str) -> str:
    reply = _docker("logs", name)
    return reply.stdout + reply.stderr


def _wait_for_log(name: str, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, _logs(name)):
        running = _docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if running != "true" or time.monotonic() >= deadline:
            pytest.fail(f"{pattern!r} not seen (running={running}):\n{_logs(name)[-3000:]}")
        time.sleep(0.5)
