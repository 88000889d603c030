"""The events cost benchmark's short mode: it runs end to end and reports both rows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "events_cost.py"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("CI"),
    reason="needs redis-server (apt-get install redis-server); required when CI is set",
)
def test_events_cost_benchmark_short_mode_reports() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--short"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = re.findall(
        r"^\| gevent \| (off|on) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) "
        r"\| ([\d.]+) \| (\d+) \|$",
        completed.stdout,
        re.M,
    )
    assert [row[0] for row in rows] == ["off", "on"], completed.stdout
    (_, _, off_commands, off_publish, *_), (_, rate, on_commands, on_publish, *_, failed) = rows
    assert int(rate) > 0 and failed == "0"
    # Task events are published: received, started and succeeded for every task (less the
    # few publishes of a start-up, spread over the tasks of a short run).
    assert float(on_publish) >= float(off_publish) + 2.5
    assert float(on_commands) > float(off_commands)
