"""Short modes of the Redis CPU benchmarks: every kind of row runs and the tables report each.

``bench/redis_cpu.py`` (the floor loop, ours and plain Celery), ``bench/process_cpu.py`` (each
process of a prefork worker) and ``bench/ab_revisions.py`` (two revisions of the worker). Only
that they complete and report: the short sizes say nothing about whether a target is met.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("redis-server") is None and not os.environ.get("CI"),
        reason="needs redis-server (apt-get install redis-server); required when CI is set",
    ),
]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
        cwd=BENCH,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_redis_cpu_short_mode_measures_the_floor_ours_and_plain_celery(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    completed = run_bench("redis_cpu.py", "--short", "--json", str(out))
    rows = json.loads(out.read_text())
    assert {row["impl"] for row in rows} == {"floor", "forwarder", "baseline"}
    # plain Celery under gevent refuses some acks now and then; ours and the floor lose none.
    assert all(row["failed"] == 0 for row in rows if row["impl"] != "baseline"), rows
    assert all(row["tasks_per_s"] > 0 and row["cpu_ms_per_task"] > 0 for row in rows), rows
    assert "| floor loop | instant |" in completed.stdout
    assert "| forwarder gevent c=32 | instant |" in completed.stdout


def test_process_cpu_reports_every_process_of_both_workers(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    completed = run_bench("process_cpu.py", "--tasks", "100", "--rounds", "1", "--json", str(out))
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


def test_ab_revisions_drains_with_both_revisions(tmp_path: Path) -> None:
    out = tmp_path / "drains.json"
    completed = run_bench(
        "ab_revisions.py", "--base", "HEAD", "--tasks", "30", "--rounds", "1", "--json", str(out)
    )
    drains = json.loads(out.read_text())
    assert set(drains) == {"base", "head"}
    for name, (drain,) in drains.items():
        assert drain["failed"] == 0, (name, drain)
        assert drain["tasks_per_s"] > 0 and drain["worker_ms_per_task"] > 0, (name, drain)
    assert "| base (HEAD) |" in completed.stdout and "| this checkout |" in completed.stdout
    assert "median of 1 rounds" in completed.stdout
