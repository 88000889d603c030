"""The targets the suite's figures are held against: each with its measured figure, met or not.

A target whose configuration the run did not measure (the short mode runs few) says so; the
suite reports, it never tunes or fails on a target.
"""

from __future__ import annotations

from typing import Any

from harness import MODEL_DELAY

NOT_MEASURED = "not measured in this run"


def find(
    rows: list[dict[str, Any]], impl: str, pool: str, concurrency: int
) -> dict[str, Any] | None:
    for row in rows:
        spec = row["spec"]
        if (spec["impl"], spec["pool"], spec["concurrency"]) == (impl, pool, concurrency):
            return row
    return None


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def soak_targets(soak: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for mode in ("forwarder-prefork", "forwarder-gevent"):
        target = f"RSS growth ≤ 1 MiB per 100k tasks after warm-up, {mode}"
        row = next((r for r in soak["modes"] if r["mode"] == mode), None)
        if row is None:
            rows.append((target, NOT_MEASURED, "-"))
            continue
        growth = row["rss_slope_mib_per_100k"]
        rows.append((target, f"{growth:.2f} MiB/100k ({row['tasks']} tasks)", verdict(growth <= 1)))
    return rows


def memory_targets(memory: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    target = "gevent c=64 tree RSS ≤ 1/25 of prefork c=64, and ≤ 100 MiB (hooks on)"
    gevent = find(memory, "forwarder", "gevent", 64)
    prefork = find(memory, "forwarder", "prefork", 64)
    if gevent is None or prefork is None:
        return [(target, NOT_MEASURED, "-")]
    share = gevent["rss_mib"] / prefork["rss_mib"]
    measured = f"{gevent['rss_mib']:.0f} MiB, 1/{1 / share:.1f} of {prefork['rss_mib']:.0f} MiB"
    return [(target, measured, verdict(share <= 1 / 25 and gevent["rss_mib"] <= 100))]


def throughput_targets(throughput: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    ideal = 32 / MODEL_DELAY
    rate_target = f"gevent c=32, 50 ms model ≥ 90% of C/latency (≥ {0.9 * ideal:.0f} tasks/s)"
    cpu_target = "gevent c=32, 50 ms model: CPU ≤ 1.7 ms per task"
    row = find(throughput, "forwarder", "gevent", 32)
    if row is None:
        return [(rate_target, NOT_MEASURED, "-"), (cpu_target, NOT_MEASURED, "-")]
    rate, cpu = row["tasks_per_s"], row["cpu_ms_per_task"]
    return [
        (rate_target, f"{rate:.0f} tasks/s ({rate / ideal:.0%})", verdict(rate >= 0.9 * ideal)),
        (cpu_target, f"{cpu:.2f} ms", verdict(cpu <= 1.7)),
    ]


def instant_targets(instant: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for pool, concurrency in (("gevent", 32), ("prefork", 2)):
        target = f"instant model, {pool} c={concurrency}: ours ≥ 2x the baseline's tasks/s"
        ours = find(instant, "forwarder", pool, concurrency)
        base = find(instant, "baseline", pool, concurrency)
        if ours is None or base is None:
            rows.append((target, NOT_MEASURED, "-"))
            continue
        times = ours["tasks_per_s"] / base["tasks_per_s"]
        measured = f"{times:.2f}x ({ours['tasks_per_s']:.0f} / {base['tasks_per_s']:.0f})"
        rows.append((target, measured, verdict(times >= 2)))
    return rows


def firehose_targets(soak: dict[str, Any], hook_cost: dict[str, Any]) -> list[tuple[str, str, str]]:
    runs = [
        (
            f"soak {r['mode']}",
            r["firehose_calls_per_record"],
            r["assume_role_per_process"],
            r["lifetimes"],
        )
        for r in soak["modes"]
        if r["spec"]["impl"] == "forwarder"
    ]
    runs += [
        (
            f"hook cost {r['pool']}",
            r["calls_per_record"],
            r["assume_role_per_process"],
            r["lifetimes"],
        )
        for r in hook_cost["ours"]
    ]
    rows = []
    for name, calls, builds, lifetimes in runs:
        rows.append(
            (
                f"Firehose API calls per record ≤ 0.01, {name}",
                f"{calls:.4f}",
                verdict(calls <= 0.01),
            )
        )
        once = bool(builds) and max(builds) <= lifetimes
        measured = (
            f"{max(builds, default=0)} at most in {len(builds)} processes, {lifetimes} lifetimes"
        )
        rows.append(
            (
                f"AssumeRole once per credential lifetime per process, {name}",
                measured,
                verdict(once),
            )
        )
    return rows


def evaluate(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        *soak_targets(results["soak"]),
        *memory_targets(results["pools_memory"]),
        *throughput_targets(results["throughput"]),
        *instant_targets(results["instant"]),
        *firehose_targets(results["soak"], results["hook_cost"]),
    ]


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {state} |" for target, measured, state in rows]
    return "\n".join(lines)
