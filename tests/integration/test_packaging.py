"""The distributions: ``python -m build`` makes an sdist and, from it, a wheel that carries every
file of the package; the wheel, installed into a clean venv with the lock's pins, runs the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "forwarder"
UV = Path(sys.executable).with_name("uv")


def _run(
    command: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command[:3]} did not finish within {timeout:g} s:\n{exc.stdout!r}")
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _package_files() -> set[str]:
    """Every file of the package in the source tree, as a path inside the distribution."""
    return {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not UV.exists():
        pytest.skip("uv is not installed beside this Python: scripts/bootstrap.sh installs it")
    out = tmp_path_factory.mktemp("dist")
    # Without --sdist or --wheel, build makes the sdist and then the wheel from it, so the wheel
    # also proves that the sdist holds everything needed to build it.
    _run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(ROOT)], 300)
    yield out


def test_the_wheel_and_sdist_carry_every_package_file(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    expected = _package_files()
    assert "forwarder/py.typed" in expected
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "forwarder = forwarder.__main__:main" in archive.read(entry_points).decode()
    assert expected - names == set(), "files of the package missing from the wheel"
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        in_sdist = {n.removeprefix(f"{top}/src/") for n in archive.getnames()}
    assert expected - in_sdist == set(), "files of the package missing from the sdist"


@pytest.mark.timeout(240)
def test_the_wheel_in_a_clean_venv_runs_the_demo(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    _run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], 60)
    pins = tmp_path / "pins.txt"
    _run(
        [str(UV), "export", "--quiet", "--frozen", "--no-emit-project", "--extra", "gevent",
         "--format", "requirements-txt", "--project", str(ROOT), "--output-file", str(pins)],
        60,
    )  # fmt: skip
    install = [str(UV), "pip", "install", "--quiet", "--python", str(python)]
    _run([*install, "--require-hashes", "-r", str(pins)], 180)
    _run([*install, "--no-deps", str(wheel)], 60)
    # Out of the source tree, with nothing of this environment's on the path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(python), "-c", "import forwarder; print(forwarder.__file__)"], 30, env=env)
    assert where.startswith(str(venv)), where
    output = _run(
        [str(venv / "bin" / "forwarder"), "demo", "--tasks", "10", "--delay", "0.01"],
        150,
        env=env,
        cwd=tmp_path,
    )
    assert "10/10 tasks finished" in output, output
