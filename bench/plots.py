"""The suite's charts, as PNG files, from the results ``run_all.py`` gathers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine or in CI

import matplotlib.pyplot as plt
from harness import MODEL_DELAY

# One line per worker kind: solid for ours, dashed for the baseline.
SERIES = (
    ("forwarder", "prefork", "o-"),
    ("forwarder", "gevent", "s-"),
    ("baseline", "prefork", "o--"),
    ("baseline", "gevent", "s--"),
)


def plot_series(axes: Any, rows: list[dict[str, Any]], value: str) -> None:
    """``value`` against concurrency, one line per implementation and pool."""
    concurrencies = sorted({r["spec"]["concurrency"] for r in rows})
    axes.set_xscale("log", base=2)
    axes.set_xticks(concurrencies, labels=[str(c) for c in concurrencies])
    axes.minorticks_off()
    for impl, pool, style in SERIES:
        points = sorted(
            (r["spec"]["concurrency"], r[value])
            for r in rows
            if r["spec"]["impl"] == impl and r["spec"]["pool"] == pool
        )
        if points:
            axes.plot(*zip(*points, strict=True), style, label=f"{impl} {pool}")


def soak_rss(soak: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in soak["modes"]:
        samples = row["samples"]
        done = [s[1] for s in samples]
        (line,) = axes.plot(done, [s[2] for s in samples], label=f"{row['mode']} RSS")
        axes.plot(done, [s[3] for s in samples], "--", color=line.get_color(), alpha=0.6)
    axes.set_xlabel("tasks done")
    axes.set_ylabel("worker tree MiB (RSS solid, PSS dashed)")
    axes.set_title(f"Soak: memory against tasks done, concurrency {soak['concurrency']}")
    axes.legend()
    axes.grid(alpha=0.3)
    save(figure, path)


def pools_memory(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5))
    plot_series(axes, rows, "rss_mib")
    axes.set_yscale("log")
    axes.set_xlabel("concurrency")
    axes.set_ylabel("worker tree RSS MiB (log)")
    axes.set_title("Worker memory by concurrency, callback and Firehose on")
    axes.legend()
    axes.grid(alpha=0.3, which="both")
    save(figure, path)


def throughput(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5))
    concurrencies = sorted({r["spec"]["concurrency"] for r in rows})
    axes.plot(
        concurrencies, [c / MODEL_DELAY for c in concurrencies], "kx:", label="ideal C / latency"
    )
    plot_series(axes, rows, "tasks_per_s")
    axes.set_xlabel("concurrency")
    axes.set_ylabel("tasks/s")
    axes.set_title(f"Throughput with a {MODEL_DELAY * 1000:g} ms model")
    axes.legend()
    axes.grid(alpha=0.3)
    save(figure, path)


def save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_all(results: dict[str, Any], folder: Path) -> list[Path]:
    paths = [folder / "soak_rss.png", folder / "pools_memory.png", folder / "throughput.png"]
    soak_rss(results["soak"], paths[0])
    pools_memory(results["pools_memory"], paths[1])
    throughput(results["throughput"], paths[2])
    return paths
