"""``forwarder demo``: the echo model server and a worker on the embedded default, 50 tasks, a table,
then one task whose model streams, its tokens shown live.

Everything runs from a temporary data folder and is stopped at the end, the worker with the same
SIGTERM warm shutdown a deployment would use. The logging hook writes a record of every task to
the file sink in that folder.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forwarder.client.broker import ForwarderClient, TaskResult
from forwarder.config.settings import load_settings
from forwarder.devtools.localrun import start_echo_server, start_forwarder
from forwarder.hooks.sinks import DEFAULT_FILE_NAME

__all__ = ["run_demo"]

RESULT_TIMEOUT = 120.0
STREAM_TOKENS = 20


def _payload(index: int) -> dict[str, object]:
    # Mostly ordinary requests; a few show a model's non-2xx reply and a broken (non-JSON) reply.
    args: dict[str, object] = {"prompt": f"hello #{index}"}
    if index % 10 == 9:
        args["status_code"] = 503
    if index == 24:
        args["raw_text"] = "<html>bad gateway</html>"
    return {"args": args}


def run_demo(
    tasks: int = 50, pool: str = "prefork", concurrency: int = 4, delay: float = 0.05
) -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="forwarder-demo-") as folder:
        data_dir = Path(folder)
        echo, port = start_echo_server(data_dir / "echo.log", "--delay", str(delay))
        console.print(f"echo model server on 127.0.0.1:{port}, {delay * 1000:g} ms a request")
        worker = start_forwarder(
            [
                "worker",
                "--data-dir", str(data_dir),
                "--pool", pool,
                "--concurrency", str(concurrency),
                "--set", "forwarder.async.user_hostname=127.0.0.1",
                "--set", f"forwarder.async.user_port={port}",
                "--set", "hooks=[logging]",
            ],
            data_dir / "worker.log",
        )  # fmt: skip
        try:
            worker.wait_for(r"ready\.")
            console.print(f"worker ready: pool={pool}, concurrency={concurrency}, embedded broker")
            results, elapsed = _run_tasks(console, data_dir, tasks)
            streamed = _stream_one(console, data_dir)
        finally:
            worker_code = worker.stop(signal.SIGTERM, timeout=60)
            echo.stop()
        console.print(_table(results))
        for index, result in enumerate(results):
            if result.error:
                console.print(f"task #{index} failed: {result.error}", soft_wrap=True)
        done = sum(r.ready for r in results)
        records_file = data_dir / DEFAULT_FILE_NAME
        records = len(records_file.read_text().splitlines()) if records_file.exists() else 0
        console.print(
            f"{done}/{tasks} tasks finished in {elapsed:.2f} s ({tasks / elapsed:.0f} tasks/s); "
            f"logging hook: {records} records in {DEFAULT_FILE_NAME}; "
            f"worker stopped with exit status {worker_code}"
        )
        return 0 if done == tasks == records - 1 and streamed and worker_code == 0 else 1


def _stream_one(console: Console, data_dir: Path) -> bool:
    """One task whose model streams tokens, shown as they arrive; True once it ends SUCCESS."""
    with ForwarderClient(load_settings(flags={"--data-dir": str(data_dir)})) as client:
        task_id = client.submit({"args": {"stream": STREAM_TOKENS, "token_delay": 0.1}})
        console.print(f"streamed task {task_id[:8]}, its tokens as the model sends them:")
        status = None
        for event in client.events(task_id, timeout=RESULT_TIMEOUT):
            data = json.loads(event.data)
            if event.kind == "chunk":
                delta = data["choices"][0]["delta"]
                console.print(delta.get("content", ""), end="", style="cyan")
            elif event.final:
                status = data["status"]
        console.print(
            f"\n  -> {status}; stored result: {client.get(task_id).result}", soft_wrap=True
        )
        return status == "SUCCESS"


def _run_tasks(console: Console, data_dir: Path, tasks: int) -> tuple[list[TaskResult], float]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        ForwarderClient(load_settings(flags={"--data-dir": str(data_dir)})) as client,
        Progress(*columns, console=console) as progress,
    ):
        started = time.monotonic()
        submitted = progress.add_task("submitted", total=tasks)
        finished = progress.add_task("finished", total=tasks)
        ids = []
        for index in range(tasks):
            ids.append(client.submit(_payload(index)))
            progress.advance(submitted)
        results: dict[str, TaskResult] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(results) < tasks and time.monotonic() < deadline:
            for task_id in ids:
                if task_id not in results and (result := client.get(task_id)).ready:
                    results[task_id] = result
                    progress.advance(finished)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        return [results.get(task_id) or client.get(task_id) for task_id in ids], elapsed


def _table(results: list[TaskResult]) -> Table:
    table = Table(title="results")
    for column, width in (("#", 3), ("task id", 8), ("status", 7), ("HTTP", 4)):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("model reply or error", no_wrap=True, overflow="ellipsis", max_width=40)
    for index, result in enumerate(results):
        style = {"SUCCESS": "green", "FAILURE": "red"}.get(result.status, "yellow")
        reply = result.result.get("result") if isinstance(result.result, dict) else result.result
        shown = result.error or (reply if isinstance(reply, str) else json.dumps(reply))
        table.add_row(
            str(index),
            result.task_id[:8],
            f"[{style}]{result.status}[/]",
            str(result.status_code or ""),
            shown[:40],
        )
    return table
