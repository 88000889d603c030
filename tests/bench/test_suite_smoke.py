"""The benchmark suite's short mode: every stage runs, and the tables and charts are written.

Only that it completes and reports: the short sizes say nothing about whether a target is met.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run_all.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_benchmark_suite_short_mode_writes_every_table_and_chart(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--short", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["short"] is True
    assert results["machine"]["cores"] >= 1
    assert all(row["tasks_per_s"] > 0 for row in results["soak"]["modes"])
    for stage in ("pools_memory", "throughput", "instant"):
        rows = results[stage]
        assert {row["spec"]["impl"] for row in rows} == {"forwarder", "baseline"}, stage
        assert all(row["tasks_per_s"] > 0 for row in rows), stage
    hook_cost = results["hook_cost"]
    assert all(row["hooks_tasks_per_s"] > 0 for row in hook_cost["ours"])
    assert all(row["tasks_per_s"] > 0 for row in hook_cost["baseline"])
    assert results["targets"]

    tables = (tmp_path / "tables.md").read_text()
    assert "## Targets" in tables
    assert "| target | measured | |" in tables

    for name in ("soak_rss.png", "pools_memory.png", "throughput.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
