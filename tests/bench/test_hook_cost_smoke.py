"""The hook cost benchmark's short mode: it runs end to end and reports every column."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "hook_cost.py"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_hook_cost_benchmark_short_mode_reports() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "40", "--concurrency", "2", "--pools", "gevent"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    row = re.search(
        r"^\| gevent \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| "
        r"([\d.]+) \| (\d+) \| (\d+) \| (\d+) \|$",
        completed.stdout,
        re.M,
    )
    assert row, completed.stdout
    plain, hooked, _ratio, _callback, _logging, calls, builds, _lifetimes, failed = row.groups()
    assert int(plain) > 0 and int(hooked) > 0
    assert 0 < float(calls) < 1  # batched: fewer calls than records
    assert int(builds) >= 1
    assert failed == "0"
    baseline = re.findall(
        r"^\| gevent \| (cached|per-task) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (.+?) \| (\d+) \|$",
        completed.stdout,
        re.M,
    )
    assert [row[0] for row in baseline] == ["cached", "per-task"], completed.stdout
    for mode, per_second, firehose_ms, calls, assume_role, failed in baseline:
        assert int(per_second) > 0 and float(firehose_ms) > 0
        assert calls == "1.0000"  # one put_record per task, by construction
        assert assume_role == ("1" if mode == "cached" else "40")
        assert failed == "0"
    # 40 tasks for each of ours, the cached baseline and the per-task baseline.
    assert "records in the bucket: 120 of 120 sent" in completed.stdout
