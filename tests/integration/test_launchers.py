"""Under the launchers production uses: ``ddtrace-run`` and ``opentelemetry-instrument``.

Each worker is started through the launcher as production starts it (``python -m forwarder
worker`` or the ``forwarder`` command, the pool from ``CELERY_WORKER_POOL``) against redis-server
and the echo model server. Every wait is bounded, so a worker that deadlocks at start-up fails
its test instead of hanging the run. A stand-in Datadog agent on 127.0.0.1 counts the traces
that ``ddtrace-run`` sends; OpenTelemetry's console exporter writes its spans to the worker's log.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forwarder.devtools.localrun import HOST, Child, EnvChanges, environment, free_port
from support.processes import Processes
from support.servers import LocalHTTPServer, QuietHandler, server_missing
from support.waiting import wait_all, wait_for, wait_one

pytestmark = [pytest.mark.integration]

READY = r"celery@\S+ ready\."
OTEL_GEVENT_PATCH = "OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH"
OTEL_TASK_SPAN = '"name": "run/ml_serve.celery_service.exec_func"'
# What opentelemetry-instrument's Celery instrumentation imports before the worker's code runs.
TOO_EARLY = "import celery.worker.consumer\n"

# The executable and the package (module) that each launcher needs.
LAUNCHERS = {
    "ddtrace-run": ("ddtrace-run", "ddtrace"),
    "opentelemetry-instrument": (
        "opentelemetry-instrument",
        "opentelemetry.instrumentation.celery",
    ),
}


def launcher_path(name: str) -> str:
    """The launcher's executable; skips the test if it is missing, or fails it when CI is set."""
    executable, module = LAUNCHERS[name]
    path = shutil.which(executable, path=f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}")
    if path is None or importlib.util.find_spec(module) is None:
        server_missing(
            f"{executable} or {module} not installed; install them with: pip install -e '.[dev]'"
        )
    return path


def forwarder_command(form: str) -> list[str]:
    """``python -m forwarder`` or the ``forwarder`` console script of this interpreter."""
    if form == "-m":
        return [sys.executable, "-m", "forwarder"]
    script = Path(sys.executable).parent / "forwarder"
    assert script.exists(), f"no console script at {script}: pip install -e ."
    return [str(script)]


def launch_env(tmp_path: Path, **changes: str) -> EnvChanges:
    """Only the test's own settings reach the worker and the launcher, whatever the shell has."""
    prefixes = ("CELERY_WORKER_", "FORWARDER_", "DD_", "OTEL_")
    inherited: dict[str, str | None] = {k: None for k in os.environ if k.startswith(prefixes)}
    return {
        **inherited,
        "AWS_ENDPOINT_URL": None,
        "PYTHONUNBUFFERED": "1",
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        **changes,
    }


def launcher_env(launcher: str, agent_port: int, *, gevent: bool) -> dict[str, str]:
    if launcher == "ddtrace-run":
        return {
            "DD_TRACE_AGENT_URL": f"http://{HOST}:{agent_port}",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            # Each trace is then a task's: the broker's polling would send traces of its own.
            "DD_PATCH_MODULES": "redis:false,kombu:false",
        }
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # Its instrumentation imports celery before the worker can patch: the launcher must patch.
    return {**env, OTEL_GEVENT_PATCH: "patch_all"} if gevent else env


class FakeAgent(LocalHTTPServer):
    """Stands in for the Datadog agent on 127.0.0.1: accepts everything, keeps the traces."""

    def __init__(self) -> None:
        self.traces = 0
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        agent = self

        class Handler(QuietHandler):
            def _reply(self) -> None:
                payload = self.read_body()
                if re.fullmatch(r"/v0\.\d/traces", self.path):
                    with agent._lock:
                        agent.traces += int(self.headers.get("X-Datadog-Trace-Count") or 0)
                        agent.payloads.append(payload)
                body = b'{"rate_by_service": {}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _reply

        super().__init__(Handler)


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with FakeAgent() as fake:
        yield fake


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[list[str], EnvChanges], Child]]:
    """Starts a command in its own process group; kills what is left of it after the test."""
    children: list[Child] = []

    def start(command: list[str], env: EnvChanges) -> Child:
        child = Child(command, tmp_path / f"launched-{len(children)}.log", env, cwd=tmp_path)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.kill()
            sys.stderr.write(f"----- {child.log_path.name}\n{child.tail(40)}\n")


def run(command: list[str], env: EnvChanges, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=environment(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


# ------------------------------------------------------------------------------------- start-up


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["-m", "console-script"])
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_worker_help_returns_under_the_launcher(tmp_path: Path, launcher: str, form: str) -> None:
    command = [launcher_path(launcher), *forwarder_command(form), "worker", "--help"]
    no_agent = launcher_env(launcher, free_port(), gevent=True)
    env = launch_env(tmp_path, CELERY_WORKER_POOL="gevent", **no_agent)
    proc = run(command, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--pool POOL" in proc.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_celery_imported_before_the_patch_is_refused(tmp_path: Path, launcher: str) -> None:
    """Patched late, kombu keeps the blocking select: such a worker took a task and never ran it."""
    # Configured as for prefork: the launcher does not patch.
    env = {"CELERY_WORKER_POOL": "gevent", **launcher_env(launcher, free_port(), gevent=False)}
    if launcher == "ddtrace-run":
        # ddtrace-run imports the user's own sitecustomize after its own.
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(TOO_EARLY)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])
        )
    # opentelemetry-instrument's Celery instrumentation imports celery itself.
    command = [launcher_path(launcher), *forwarder_command("-m"), "worker"]
    command += ["--broker-url", f"redis://{HOST}:{free_port()}/0", "--data-dir", str(tmp_path)]
    proc = run(command, launch_env(tmp_path, **env), tmp_path)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("forwarder: invalid pool='gevent'; allowed: gevent patched before")
    assert "but celery, kombu came first" in message
    assert f"{OTEL_GEVENT_PATCH}=patch_all" in message
    assert len(message.splitlines()) == 1


# ---------------------------------------------------------------------------------- serving tasks


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("form", ["-m", "console-script"])
@pytest.mark.parametrize("pool", ["gevent", "prefork"])
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_worker_under_the_launcher_serves_tasks(
    tmp_path: Path,
    launch: Callable[[list[str], EnvChanges], Child],
    agent: FakeAgent,
    procs: Processes,
    redis_url: str,
    launcher: str,
    pool: str,
    form: str,
) -> None:
    command = [launcher_path(launcher), *forwarder_command(form), "worker"]
    echo = procs.echo()
    queue = f"{pool}-{form}"
    # Prefork runs 2 processes here: it is about starting and serving, not about concurrency.
    concurrency, count, delay = (16, 32, 0.5) if pool == "gevent" else (2, 4, 0.1)
    command += ["--broker-url", redis_url, "--queue", queue, "--concurrency", str(concurrency)]
    command += ["--set", f"forwarder.async.user_port={echo.port}"]
    command += ["--set", f"forwarder.async.user_hostname={HOST}"]
    traced = launcher_env(launcher, agent.port, gevent=pool == "gevent")
    env = launch_env(tmp_path, CELERY_WORKER_POOL=pool, **traced)
    worker = launch(command, env)
    try:
        worker.wait_for(READY, timeout=30)
    except RuntimeError as exc:
        pytest.fail(f"worker not ready under {launcher}: {exc}")

    client = procs.client(broker_url=redis_url, queue=queue)
    warm_up = wait_one(client, client.submit({"args": {"warm": "up"}}))
    assert warm_up.status == "SUCCESS", warm_up
    started = time.monotonic()
    ids = [client.submit({"args": {"n": n, "delay": delay}}) for n in range(count)]
    done = wait_all(client, ids, timeout=20)
    elapsed = time.monotonic() - started
    assert [done[t].status for t in ids] == ["SUCCESS"] * count
    if pool == "gevent":
        # 32 tasks of 0.5 s take 16 s one at a time, 1 s with 16 at once.
        assert elapsed < 3.0, f"{count} tasks of {delay} s took {elapsed:.2f} s under {launcher}"
        assert echo.stats()["max_in_flight"] >= 16, echo.stats()

    # The launcher did instrument the worker: every task's trace or span is exported.
    if launcher == "ddtrace-run":
        wait_for(
            lambda: agent.traces >= count + 1,
            15,
            lambda: f"{agent.traces} traces reached the agent for {count + 1} tasks",
        )
        assert any(b"celery.run" in payload for payload in agent.payloads)
    else:
        wait_for(
            lambda: worker.log().count(OTEL_TASK_SPAN) >= count + 1,
            15,
            lambda: f"{worker.log().count(OTEL_TASK_SPAN)} task spans for {count + 1} tasks",
        )
