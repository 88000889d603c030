"""Two revisions of the worker, in alternating drains on one stack: what a change did to tasks/s.

Exports ``--base`` (a commit; HEAD~1 by default) into a temporary folder with ``git archive``
and drains ``--tasks`` prefilled tasks with a worker of each revision in turn, ``--rounds``
times: the base's worker imports the forwarder from that folder, the other from this checkout
(uncommitted changes included). The machine's speed drifts within minutes (plain runs of one
revision varied by a third), so each round pairs two drains a few seconds apart, and what is
reported is the median over the rounds of this checkout's figure over the base's.

    .venv/bin/python bench/ab_revisions.py                  # HEAD~1 against this checkout, prefork c=2
    .venv/bin/python bench/ab_revisions.py --pool gevent --concurrency 32 --slow-model
    .venv/bin/python bench/ab_revisions.py --base HEAD --tasks 30 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import Stack, WorkerSpec
from process_cpu import drain

ROOT = Path(__file__).resolve().parents[1]


def export_source(revision: str, folder: Path) -> Path:
    """The ``src`` folder of ``revision``, written under ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def report(base: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| worker | tasks/s, each round | median | worker CPU ms/task, median | failed |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("base", f"base ({base})"), ("head", "this checkout")):
        speeds = [run["tasks_per_s"] for run in runs[name]]
        cpu = statistics.median(run["worker_ms_per_task"] for run in runs[name])
        failed = sum(run["failed"] for run in runs[name])
        shown = ", ".join(f"{speed:.0f}" for speed in speeds)
        lines.append(
            f"| {label} | {shown} | {statistics.median(speeds):.0f} | {cpu:.3f} | {failed} |"
        )
    pairs = list(zip(runs["base"], runs["head"], strict=True))
    speed = statistics.median(head["tasks_per_s"] / base["tasks_per_s"] for base, head in pairs)
    cpu = statistics.median(
        head["worker_ms_per_task"] / base["worker_ms_per_task"] for base, head in pairs
    )
    lines.append(
        f"\nthis checkout / base, median of {len(pairs)} rounds: "
        f"tasks/s {speed:.3f}x, CPU per task {cpu:.3f}x"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the commit to compare with (HEAD~1)")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "gevent"))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--slow-model", action="store_true", help="the 50 ms model, not instant")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also every drain, as JSON")
    args = parser.parse_args()

    spec = WorkerSpec("forwarder", args.pool, args.concurrency, slow_model=args.slow_model)
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="ab-revisions-") as folder, Stack(aws=False) as stack:
        specs = {"base": replace(spec, source=export_source(args.base, Path(folder))), "head": spec}
        for _ in range(args.rounds):
            for name, worker in specs.items():
                runs[name].append(drain(stack, worker, args.tasks))
    print(report(args.base, runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
