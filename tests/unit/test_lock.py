"""uv.lock still holds what pyproject.toml asks for, checked offline by uv itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("gevent", "aws", "gateway", "dev")


def _uv() -> str:
    # scripts/bootstrap.sh installs uv into the venv; a uv on PATH does as well.
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed: scripts/bootstrap.sh installs it into .venv")
    return found


def _lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    # --offline: the check compares the lock with pyproject.toml and needs no index when they
    # agree; when they do not, resolving anew offline fails as well, which is the point.
    return subprocess.run(
        [_uv(), "lock", "--check", "--offline", "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "UV_NO_PROGRESS": "1"},
    )


def _clean_env() -> dict[str, str]:
    # A developer's UV_* settings (a frozen or locked mode, another index) must not decide.
    return {k: v for k, v in os.environ.items() if not k.startswith("UV_")}


def test_the_lock_matches_pyproject() -> None:
    result = _lock_check(ROOT)
    assert result.returncode == 0, (
        "uv.lock does not match pyproject.toml's dependencies; run `.venv/bin/uv lock` and "
        f"commit uv.lock:\n{result.stderr}"
    )


def test_a_dependency_the_lock_lacks_fails_the_check(tmp_path: Path) -> None:
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    text = (ROOT / "pyproject.toml").read_text()
    changed = text.replace(
        '"rich>=13",', '"rich>=13",\n    "inference-forwarder-absent-dep>=1",', 1
    )
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    (tmp_path / "README.md").write_text("")
    result = _lock_check(tmp_path)
    assert result.returncode != 0, result.stderr


def test_the_lock_covers_every_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["optional-dependencies"]) == sorted(EXTRAS)
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (root,) = [p for p in lock["package"] if p["name"] == project["name"]]
    assert sorted(root["optional-dependencies"]) == sorted(EXTRAS)
    # Every locked file carries a hash, so the installs check what they download.
    for package in lock["package"]:
        for artefact in [*package.get("wheels", []), *filter(None, [package.get("sdist")])]:
            assert artefact["hash"].startswith("sha256:"), package["name"]
