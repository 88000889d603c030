"""bench/redis_cpu.py's short mode: every kind of row runs and the table reports each.

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

BENCH = Path(__file__).resolve().parents[2] / "bench" / "redis_cpu.py"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_redis_cpu_short_mode_measures_the_floor_ours_and_plain_celery(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
        cwd=BENCH.parent,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {row["impl"] for row in rows} == {"floor", "forwarder", "baseline"}
    # plain Celery under gevent refuses some acks now and then; ours and the floor lose none.
    assert all(row["failed"] == 0 for row in rows if row["impl"] != "baseline"), rows
    assert all(row["tasks_per_s"] > 0 and row["cpu_ms_per_task"] > 0 for row in rows), rows
    assert "| floor loop | instant |" in completed.stdout
    assert "| forwarder gevent c=32 | instant |" in completed.stdout
