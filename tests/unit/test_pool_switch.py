"""The gevent switch: which pool is requested, and that only gevent workers get patched."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder import pool_switch
from forwarder.pool_switch import MAX_TASKS_ENV, POOL_ENV, POOLS, patch_if_gevent, requested_pool

HEAVY = ("celery", "kombu", "requests", "urllib3", "gevent", "boto3", "botocore", "yaml")


def test_constants() -> None:
    assert POOLS == ("prefork", "gevent")
    assert POOL_ENV == "CELERY_WORKER_POOL"
    assert MAX_TASKS_ENV == "CELERY_WORKER_MAX_TASKS_PER_CHILD"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["worker"], {}, "prefork"),
        (["worker"], {POOL_ENV: ""}, "prefork"),
        (["worker"], {POOL_ENV: "   "}, "prefork"),
        (["worker"], {POOL_ENV: "gevent"}, "gevent"),
        (["worker"], {POOL_ENV: " gevent\n"}, "gevent"),
        (["worker"], {POOL_ENV: "prefork"}, "prefork"),
        (["worker", "--pool", "gevent"], {}, "gevent"),
        (["worker", "--pool=gevent"], {}, "gevent"),
        (["worker", "--queue", "q", "--pool", "gevent", "--concurrency", "8"], {}, "gevent"),
        (["worker", "--pool", "prefork"], {POOL_ENV: "gevent"}, "prefork"),
        (["worker", "--pool=prefork"], {POOL_ENV: "gevent"}, "prefork"),
        (["worker", "--pool", "gevent"], {POOL_ENV: "prefork"}, "gevent"),
        # As argparse reads it: the last --pool wins.
        (["worker", "--pool", "prefork", "--pool", "gevent"], {}, "gevent"),
        (["worker", "--pool=gevent", "--pool", "prefork"], {}, "prefork"),
        (["worker", "--pool", " gevent "], {}, "gevent"),
        # --pool with no value after it: the environment decides.
        (["worker", "--pool"], {POOL_ENV: "gevent"}, "gevent"),
        (["worker", "--pool"], {}, "prefork"),
        # Unknown pools are passed on; settings reject them with a message.
        (["worker", "--pool", "solo"], {}, "solo"),
        (["worker"], {POOL_ENV: "threads"}, "threads"),
        # Look-alikes are not the flag.
        (["worker", "--pools", "gevent"], {}, "prefork"),
        (["worker", "--queue", "--pool-x"], {}, "prefork"),
    ],
)
def test_requested_pool(argv: list[str], environ: dict[str, str], expected: str) -> None:
    assert requested_pool(argv, environ) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["worker"],
        ["worker", "--pool", "prefork"],
        ["worker", "--pool=prefork"],
        ["check-config", "--pool", "gevent"],
        ["submit", "{}", "--pool=gevent"],
        ["echo-server"],
        ["demo", "--pool", "gevent"],
        ["--pool", "gevent", "worker"],
    ],
)
def test_patch_if_gevent_is_false_unless_a_gevent_worker(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POOL_ENV, raising=False)
    # A gevent import would fail loudly here, proving that none is attempted.
    monkeypatch.setitem(sys.modules, "gevent", None)
    assert patch_if_gevent(argv) is False


@pytest.mark.parametrize("command", ["check-config", "submit", "get", "echo-server", "demo"])
def test_gevent_env_patches_only_the_worker_command(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POOL_ENV, "gevent")
    monkeypatch.setitem(sys.modules, "gevent", None)
    assert patch_if_gevent([command]) is False


def test_patch_if_gevent_reads_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_ENV, "gevent")
    monkeypatch.setitem(sys.modules, "gevent", None)
    monkeypatch.setattr(sys, "argv", ["forwarder", "get", "abc"])
    assert patch_if_gevent() is False
    # The same environment with a worker argv does try gevent (which is blocked here).
    monkeypatch.setattr(sys, "argv", ["forwarder", "worker"])
    with pytest.raises(SystemExit):
        patch_if_gevent()


def test_missing_gevent_stops_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(POOL_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "gevent", None)  # import gevent -> ImportError
    with pytest.raises(SystemExit) as info:
        patch_if_gevent(["worker", "--pool", "gevent"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "gevent pool needs gevent" in err
    assert "inference-forwarder[gevent]" in err
    assert len(err.strip().splitlines()) == 1


def test_pool_switch_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(pool_switch.__file__).read_text(encoding="utf-8"))
    top_level_imports: set[str] = set()
    for node in tree.body:  # module level only: gevent is imported inside patch_if_gevent
        if isinstance(node, ast.Import):
            top_level_imports.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level_imports.add(node.module.split(".")[0])
    assert top_level_imports == {"__future__", "os", "sys", "collections"}


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
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_importing_forwarder_imports_nothing_heavy(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import json, sys
        import forwarder
        import forwarder.pool_switch
        names = forwarder.__all__
        print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
        """,
        tmp_path,
    )
    assert result == dict.fromkeys(HEAVY, False)


def test_prefork_worker_path_never_imports_gevent(tmp_path: Path) -> None:
    result = run_python(
        """
        import json, sys
        from forwarder.pool_switch import patch_if_gevent
        sys.argv = ["forwarder", "worker", "--pool", "prefork"]
        patched = patch_if_gevent()
        gevent_after_switch = "gevent" in sys.modules
        from forwarder import cli
        from forwarder.settings import load_settings
        from forwarder.worker import build_forwarder, create_worker_app
        settings = load_settings(flags={"--pool": "prefork"})
        app = create_worker_app(settings, build_forwarder(settings))
        tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
        app.close()
        print(json.dumps({
            "patched": patched,
            "gevent_after_switch": gevent_after_switch,
            "gevent": "gevent" in sys.modules,
            "celery": "celery" in sys.modules,
            "tasks": tasks,
        }))
        """,
        tmp_path,
    )
    assert result == {
        "patched": False,
        "gevent_after_switch": False,
        "gevent": False,
        "celery": True,
        "tasks": [
            "hosted_model_inference.inference.async_inference.tasks.predict",
            "ml_serve.celery_service.exec_func",
        ],
    }


def test_gevent_env_patches_before_celery(tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    result = run_python(
        """
        import json, sys
        from forwarder.pool_switch import patch_if_gevent
        sys.argv = ["forwarder", "worker"]
        before = {m: m in sys.modules for m in ("celery", "kombu", "requests", "urllib3")}
        patched = patch_if_gevent()
        from gevent import monkey
        after = {m: m in sys.modules for m in ("celery", "kombu", "requests", "urllib3")}
        print(json.dumps({
            "patched": patched,
            "socket": monkey.is_module_patched("socket"),
            "threading": monkey.is_module_patched("threading"),
            "before": before,
            "after": after,
        }))
        """,
        tmp_path,
        CELERY_WORKER_POOL="gevent",
    )
    not_imported = dict.fromkeys(("celery", "kombu", "requests", "urllib3"), False)
    assert result == {
        "patched": True,
        "socket": True,
        "threading": True,
        "before": not_imported,
        "after": not_imported,
    }


def test_gevent_flag_patches_and_prefork_flag_wins_over_env(tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    result = run_python(
        """
        import json, sys
        from forwarder.pool_switch import patch_if_gevent
        flag_prefork = patch_if_gevent(["worker", "--pool", "prefork"])
        prefork_left_gevent_alone = "gevent" not in sys.modules
        flag_gevent = patch_if_gevent(["worker", "--pool=gevent"])
        from gevent import monkey
        print(json.dumps({
            "flag_prefork": flag_prefork,
            "prefork_left_gevent_alone": prefork_left_gevent_alone,
            "flag_gevent": flag_gevent,
            "socket": monkey.is_module_patched("socket"),
            "celery": "celery" in sys.modules,
        }))
        """,
        tmp_path,
        CELERY_WORKER_POOL="gevent",
    )
    assert result == {
        "flag_prefork": False,
        "prefork_left_gevent_alone": True,
        "flag_gevent": True,
        "socket": True,
        "celery": False,
    }
