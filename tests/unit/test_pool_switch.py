"""The gevent switch: gevent workers are patched before celery is imported, others never see gevent.

The subprocess tests run ``forwarder.cli.commands.main(["worker", ...])`` in a fresh interpreter with a
stand-in ``forwarder.worker.app`` module whose ``run_worker`` reports what was imported and patched
at the moment the real worker would start, instead of starting it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder.errors import ConfigError
from forwarder.worker.gevent_switch import (
    MAX_TASKS_ENV,
    PATCH_FIRST,
    PATCHED_MODULES,
    POOL_ENV,
    POOLS,
    patch_gevent,
)
from support.imports import packages_imported

HEAVY = ("celery", "kombu", "redis", "requests", "urllib3", "gevent", "boto3", "botocore", "yaml")
LATE = ("celery", "kombu", "redis", "requests", "urllib3", "boto3", "botocore")


def test_constants() -> None:
    assert POOLS == ("prefork", "gevent")
    assert POOL_ENV == "CELERY_WORKER_POOL"
    assert MAX_TASKS_ENV == "CELERY_WORKER_MAX_TASKS_PER_CHILD"
    assert PATCHED_MODULES == ("socket", "ssl", "select")
    # What the probes below call late is exactly what the switch guards.
    assert set(LATE) == set(PATCH_FIRST)


def test_missing_gevent_is_a_config_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gevent", None)  # import gevent -> ImportError
    with pytest.raises(ConfigError) as info:
        patch_gevent()
    message = str(info.value)
    assert "gevent" in message
    assert "inference-forwarder[gevent]" in message
    assert len(message.splitlines()) == 1


def test_an_unpatched_process_is_refused_a_gevent_pool() -> None:
    pytest.importorskip("gevent")
    from forwarder.worker.gevent_switch import check_gevent_patched

    # This test process never patched: exactly what a too-early import would leave behind.
    with pytest.raises(ConfigError) as info:
        check_gevent_patched()
    message = str(info.value)
    assert "but socket, ssl, select are not" in message
    assert "python -m forwarder worker" in message
    assert "docs/launchers.md" in message
    assert len(message.splitlines()) == 1


def test_the_refusal_names_only_what_is_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkey = pytest.importorskip("gevent.monkey")
    from forwarder.worker.gevent_switch import check_gevent_patched

    monkeypatch.setattr(monkey, "is_module_patched", lambda name: name != "ssl")
    with pytest.raises(ConfigError, match="but ssl is not: start it with"):
        check_gevent_patched()
    monkeypatch.setattr(monkey, "is_module_patched", lambda name: True)
    check_gevent_patched()


def test_importing_the_switch_imports_nothing_outside_the_standard_library() -> None:
    # gevent itself only once patch_gevent runs.
    assert packages_imported("import forwarder.worker.gevent_switch") == ["forwarder"]


# -------------------------------------------------------------------------------- in subprocesses


def run_python(code: str, tmp_path: Path, **env: str) -> dict[str, object]:
    """Run code in a fresh interpreter; it prints one JSON object as its last line."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in (POOL_ENV, MAX_TASKS_ENV) and not key.startswith("FORWARDER_")
    }
    environ.update(env)
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_importing_forwarder_and_its_cli_imports_nothing_heavy(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import json, sys
        import forwarder
        import forwarder.worker.gevent_switch
        names = forwarder.__all__
        heavy = {{m: m in sys.modules for m in {HEAVY!r}}}
        import forwarder.cli.commands
        late = {{m: m in sys.modules for m in {(*LATE, "gevent", "socket", "ssl")!r}}}
        print(json.dumps({{"package": heavy, "cli": late}}))
        """,
        tmp_path,
    )
    assert result == {
        "package": dict.fromkeys(HEAVY, False),
        "cli": dict.fromkeys((*LATE, "gevent", "socket", "ssl"), False),
    }


# Replaces forwarder.worker.app so that cli.main(["worker", ...]) stops where the worker would start.
PROBE = """
{prelude}
import contextlib, io, json, sys, types
argv, config = {argv!r}, {config!r}
if config:
    open("config.yaml", "w").write(config)
probe = types.ModuleType("forwarder.worker.app")
seen = {{}}

def run_worker(settings, deliverer_argv=()):
    gevent = sys.modules.get("gevent")
    monkey = sys.modules.get("gevent.monkey")
    seen.update(
        pool=settings.worker.pool,
        gevent_imported=gevent is not None,
        socket_patched=bool(monkey and monkey.is_module_patched("socket")),
        ssl_patched=bool(monkey and monkey.is_module_patched("ssl")),
        select_patched=bool(monkey and monkey.is_module_patched("select")),
        late_imported=sorted(m for m in {late!r} if m in sys.modules),
    )
    return 0

probe.run_worker = run_worker
sys.modules["forwarder.worker.app"] = probe
from forwarder.cli.commands import main
with contextlib.redirect_stderr(io.StringIO()) as stderr:
    seen["exit"] = main(argv)
seen["stderr"] = stderr.getvalue()
print(json.dumps(seen))
"""


def probe_worker(
    tmp_path: Path, argv: list[str], config: str = "", prelude: str = "", **env: str
) -> dict[str, object]:
    code = PROBE.format(
        prelude=prelude,
        argv=["worker", "--data-dir", str(tmp_path), *argv],
        config=config,
        late=LATE,
    )
    return run_python(code, tmp_path, **env)


GEVENT_PATCHED = {
    "pool": "gevent",
    "gevent_imported": True,
    "socket_patched": True,
    "ssl_patched": True,
    "select_patched": True,
    "late_imported": [],
    "exit": 0,
    "stderr": "",
}
PREFORK_UNTOUCHED = {
    "pool": "prefork",
    "gevent_imported": False,
    "socket_patched": False,
    "ssl_patched": False,
    "select_patched": False,
    "late_imported": [],
    "exit": 0,
    "stderr": "",
}


@pytest.mark.parametrize(
    ("argv", "config", "env"),
    [
        pytest.param(["--pool", "gevent"], "", {}, id="flag"),
        pytest.param(["--pool=gevent"], "", {}, id="flag="),
        pytest.param([], "", {POOL_ENV: "gevent"}, id="environment"),
        pytest.param(["--config", "config.yaml"], "worker:\n  pool: gevent\n", {}, id="file"),
        pytest.param(["--set", "worker.pool=gevent"], "", {}, id="--set"),
        pytest.param(["--pool", "gevent"], "", {POOL_ENV: "prefork"}, id="flag-over-env"),
    ],
)
def test_a_gevent_worker_is_patched_before_celery_is_imported(
    tmp_path: Path, argv: list[str], config: str, env: dict[str, str]
) -> None:
    pytest.importorskip("gevent")
    assert probe_worker(tmp_path, argv, config, **env) == GEVENT_PATCHED


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        pytest.param([], {}, id="default"),
        pytest.param(["--pool", "prefork"], {POOL_ENV: "gevent"}, id="flag-over-env"),
        pytest.param([], {POOL_ENV: ""}, id="empty-env"),
    ],
)
def test_a_prefork_worker_never_imports_gevent(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    assert probe_worker(tmp_path, argv, **env) == PREFORK_UNTOUCHED


# opentelemetry-instrument's Celery instrumentation imports celery.worker.consumer before the
# worker's code runs, and with it kombu's poller bound to the blocking select.select: patched
# afterwards, that worker received its first task and never ran it.
INSTRUMENTED = "import celery.worker.consumer"


@pytest.mark.parametrize(
    ("prelude", "named"),
    [
        pytest.param(INSTRUMENTED, "celery, kombu", id="celery"),
        pytest.param("import kombu.utils.eventio", "kombu", id="kombu"),
        pytest.param("import requests", "requests, urllib3", id="requests"),
        pytest.param("import redis", "redis", id="redis"),
    ],
)
def test_a_gevent_worker_refuses_when_celery_or_its_kin_came_first(
    tmp_path: Path, prelude: str, named: str
) -> None:
    pytest.importorskip("gevent")
    result = probe_worker(tmp_path, ["--pool", "gevent"], prelude=prelude)
    stderr = str(result.pop("stderr"))
    assert result == {"exit": 2}  # refused before the worker started
    assert stderr.startswith("forwarder: invalid pool='gevent'; allowed: gevent patched before")
    assert f"but {named} came first" in stderr
    assert "OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH=patch_all" in stderr
    assert "docs/launchers.md" in stderr
    assert stderr.count("\n") == 1


def test_a_launcher_that_patched_first_may_import_celery_before_the_worker(
    tmp_path: Path,
) -> None:
    pytest.importorskip("gevent")
    # What opentelemetry-instrument does with OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH.
    prelude = f"from gevent import monkey; monkey.patch_all(); {INSTRUMENTED}"
    result = probe_worker(tmp_path, [], prelude=prelude, **{POOL_ENV: "gevent"})
    # Patching again is a no-op: no warning either.
    assert result == {**GEVENT_PATCHED, "late_imported": ["celery", "kombu"]}


def test_a_prefork_worker_does_not_mind_what_came_first(tmp_path: Path) -> None:
    result = probe_worker(tmp_path, [], prelude=INSTRUMENTED)
    assert result == {**PREFORK_UNTOUCHED, "late_imported": ["celery", "kombu"]}


@pytest.mark.parametrize("command", ["check-config", "echo-server --port 0 --help"])
def test_other_commands_never_import_gevent(tmp_path: Path, command: str) -> None:
    result = run_python(
        f"""
        import contextlib, io, json, sys
        from forwarder.cli.commands import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main({command.split()!r} + ["--data-dir", {str(tmp_path)!r}] * {command == "check-config"})
        print(json.dumps({{"gevent": "gevent" in sys.modules}}))
        """,
        tmp_path,
        CELERY_WORKER_POOL="gevent",
    )
    assert result == {"gevent": False}
