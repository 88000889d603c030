"""The callback delivery benchmark's short mode: it runs end to end and reports every row."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "callback_delivery.py"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_callback_delivery_benchmark_short_mode_reports() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "30", "--rounds", "1", "--receiver-delay", "0.5"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = dict(
        re.findall(
            r"^\| (none|queued) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$",
            completed.stdout,
            re.M,
        )
    )
    assert set(rows) == {"none", "queued"}, completed.stdout
    assert all(float(rate) > 0 for rate in rows.values())
    calls = re.search(r"callbacks received by the end: (\d+)", completed.stdout)
    assert calls and int(calls.group(1)) >= 1, completed.stdout
