"""Where a worker's CPU goes: py-spy samples of one worker draining a prefilled queue.

Sends ``--tasks`` tasks, starts one worker (by default gevent at concurrency 32 on the 50 ms
model with the Firehose logging hook, as in the throughput stage), and samples it with py-spy
for ``--seconds`` while it drains. Prints the run's tasks/s and worker CPU per task, the share of
samples by the library the sampled code was in (self time), and the functions holding the most
samples (inclusive). Idle samples (a greenlet hub waiting on sockets) are left out unless
``--idle``; ``--children`` keeps only the samples of prefork pool children.

    .venv/bin/python bench/cpu_profile.py --pool gevent --concurrency 32 --tasks 8000
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from harness import Stack, WorkerSpec, start_worker, tree_cpu_seconds
from load import prefill, rate, wait_results

# A frame as py-spy writes it: "function (path/to/file.py:line)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
LIBRARIES = (
    "forwarder",
    "celery",
    "kombu",
    "billiard",
    "redis",
    "urllib3",
    "requests",
    "urllib",
    "gevent",
    "botocore",
    "json",
    "logging",
    "http",
    "socket",
    "ssl",
)


def library(path: str) -> str:
    parts = Path(path).parts
    for name in LIBRARIES:
        if name in parts or f"{name}.py" in parts or Path(path).stem == name:
            return name
    return "other" if path else "native"


def summarise(raw: str, children: bool = False) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples by library, inclusive samples by function.

    ``children``: only the samples of prefork pool children (billiard's work loop in the stack).
    """
    by_library: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if children and "Worker.workloop" not in stack:
            continue
        total += count
        frames = [FRAME.match(frame) for frame in stack.split(";")]
        names = [
            f"{match['function']} ({'/'.join(Path(match['file']).parts[-2:])})" if match else frame
            for match, frame in zip(frames, stack.split(";"), strict=True)
        ]
        leaf = frames[-1]
        by_library[library(leaf["file"] if leaf else "")] += count
        for name in set(names):
            by_function[name] += count
    return total, by_library, by_function


def profile(args: argparse.Namespace) -> dict[str, Any]:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    spec = WorkerSpec(
        "forwarder",
        args.pool,
        args.concurrency,
        firehose="sink" if args.hooks else "off",
        slow_model=not args.instant,
    )
    with Stack() as stack:
        queue = stack.new_queue(spec.label)
        ids = prefill(stack, queue, args.tasks)
        worker = start_worker(stack, spec, queue)
        try:
            cpu_before = tree_cpu_seconds(worker.pid)
            output = stack.folder / "profile.txt"
            sampler = subprocess.Popen(
                [py_spy, "record", "--pid", str(worker.pid), "--duration", str(args.seconds)]
                + ["--rate", "200", "--format", "raw", "--output", str(output), "--nonblocking"]
                + (["--subprocesses"] if args.pool == "prefork" else [])
                + (["--idle"] if args.idle else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            done = wait_results(stack, ids, timeout=600, alive=lambda: worker.running)
            cpu = tree_cpu_seconds(worker.pid) - cpu_before
            sampler.wait(timeout=args.seconds + 60)
            raw = output.read_text() if output.exists() else ""
        finally:
            worker.stop(timeout=60)
    total, by_library, by_function = summarise(raw, children=args.children)
    return {
        "tasks_per_s": rate(list(done.values())),
        "cpu_ms_per_task": 1000 * cpu / args.tasks,
        "failed": args.tasks - sum(meta.get("status") == "SUCCESS" for meta in done.values()),
        "samples": total,
        "by_library": by_library,
        "by_function": by_function,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pool", default="gevent", choices=("gevent", "prefork"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=8000)
    parser.add_argument("--seconds", type=int, default=12, help="sampling time")
    parser.add_argument("--instant", action="store_true", help="instant model, not 50 ms")
    parser.add_argument("--no-hooks", dest="hooks", action="store_false")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--idle", action="store_true", help="keep idle samples: where the worker waits too"
    )
    parser.add_argument(
        "--children", action="store_true", help="only the prefork pool children's samples"
    )
    args = parser.parse_args()
    result = profile(args)
    total = max(result["samples"], 1)
    model = "instant" if args.instant else "50 ms"
    print(
        f"{args.pool} c={args.concurrency}, {model} model, {args.tasks} tasks: "
        f"{result['tasks_per_s']:.0f} tasks/s, {result['cpu_ms_per_task']:.2f} ms CPU per "
        f"task, {result['failed']} failed, {result['samples']} samples"
    )
    print("\n| library (self) | share of samples |\n|---|---|")
    for name, count in result["by_library"].most_common():
        print(f"| {name} | {100 * count / total:.1f}% |")
    print("\n| function (inclusive) | share of samples |\n|---|---|")
    for name, count in result["by_function"].most_common(args.top):
        print(f"| `{name}` | {100 * count / total:.1f}% |")


if __name__ == "__main__":
    main()
