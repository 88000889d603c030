"""bench/process_cpu.py's short mode: both workers drain and every process is reported.

Only that it completes and reports: the short sizes say nothing about how busy a process is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "process_cpu.py"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_process_cpu_reports_every_process_of_both_workers(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "100", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
        cwd=BENCH.parent,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert set(runs) == {"forwarder", "baseline"}
    processes = {"parent", "child 1", "child 2", "redis-server", "instant model"}
    for impl, (run,) in runs.items():
        assert set(run["cores"]) == processes, (impl, run)
        assert run["tasks_per_s"] > 0, (impl, run)
        assert run["ms_per_task"]["child 1"] > 0, (impl, run)
    assert runs["forwarder"][0]["failed"] == 0, runs["forwarder"]
    assert "| forwarder |" in completed.stdout and "| plain Celery |" in completed.stdout
    assert "median of 1 rounds" in completed.stdout
