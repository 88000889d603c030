"""The worker memory benchmark's short mode: it runs end to end and reports both pools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "worker_rss.py"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_worker_rss_benchmark_short_mode_reports_both_pools() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "40", "--concurrency", "2"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = re.findall(
        r"^\| (prefork|gevent) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", completed.stdout, re.M
    )
    assert [row[0] for row in rows] == ["prefork", "gevent"], completed.stdout
    for _pool, tasks_per_s, rss, pss, failed in rows:
        assert int(tasks_per_s) > 0
        assert int(rss) >= int(pss) > 0
        assert failed == "0"
    assert re.search(r"gevent / prefork: RSS \d+\.\d\d", completed.stdout)
