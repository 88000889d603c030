"""The gateway load benchmark's short mode: it runs end to end and reports every kind of request."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gateway_load.py"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_gateway_load_benchmark_short_mode_reports() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--short"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = re.findall(
        r"^\| (POST /v1/async-tasks|POST with Idempotency-Key|GET /v1/async-tasks/\{id\}) "
        r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|$",
        completed.stdout,
        re.M,
    )
    assert [row[0] for row in rows] == [
        "POST /v1/async-tasks",
        "POST with Idempotency-Key",
        "GET /v1/async-tasks/{id}",
    ], completed.stdout
    for _label, per_second, p50, p99, worst, cpu, failed in rows:
        assert int(per_second) > 0
        assert 0 < float(p50) <= float(p99) <= float(worst)
        assert float(cpu) > 0
        assert failed == "0"
    assert "200 requests of each kind from 4 threads" in completed.stdout
