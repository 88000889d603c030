"""The stream cost benchmark's short mode: it runs end to end and reports every column."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stream_cost.py"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_stream_cost_benchmark_short_mode_reports() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--short"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    streamed = re.search(
        r"^\| SSE stream, recorded \| ([\d.]+) \| (-?[\d.]+) \| ([\d.]+) \| ([\d.]+) \| "
        r"([\d.]+) \| (\d+) \|$",
        completed.stdout,
        re.M,
    )
    assert streamed, completed.stdout
    cpu_ms, _per_chunk, _ratio, rss, _rss_ratio, failed = streamed.groups()
    assert float(cpu_ms) > 0 and float(rss) > 0
    assert failed == "0"
    assert "events in one task's log: 202 (chunks + final state)" in completed.stdout
    assert "result equals the stream: True" in completed.stdout
