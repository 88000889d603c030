"""Hooks whose far end is down for a whole run: results unaffected, every failure counted."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import yaml

from forwarder.devtools.localrun import aws_environment, free_port
from support.processes import Processes
from support.tally import Tally, scaled, submit_all

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def hook_totals(log: str, hook: str) -> dict[str, int]:
    """The counts each worker process logged when it stopped, summed."""
    totals = {"attempts": 0, "successes": 0, "failures": 0}
    pattern = rf"{hook} attempts=(\d+) successes=(\d+) failures=(\d+)"
    for match in re.finditer(pattern, log):
        for name, value in zip(totals, match.groups(), strict=True):
            totals[name] += int(value)
    return totals


def sink_totals(log: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for line in re.findall(r"firehose sink: ([^\"]*)", log):
        for name, value in re.findall(r"(\w+)=(\d+)", line):
            totals[name] = totals.get(name, 0) + int(value)
    return totals


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_callback_receiver_and_logging_sink_down(
    pool: str, procs: Processes, redis_url: str, tmp_path: Path
) -> None:
    count = scaled(60)
    dead = free_port()  # nothing listens here: both the callback and Firehose (via STS) fail
    config = tmp_path / "hooks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hooks": ["callback", "logging"],
                "endpoint": {"id": "end_1", "name": "echo", "type": "async"},
                "callback": {
                    "default_url": f"http://127.0.0.1:{dead}/callback",
                    # The hook's own tries in the slot, counted by the worker.
                    "delivery": "inline",
                    "max_attempts": 2,
                    "backoff_seconds": 0.01,
                    "timeout_seconds": 1,
                },
                "logging": {
                    "sink": "firehose",
                    "stream_name": "records",
                    "role_arn": "arn:aws:iam::123456789012:role/logger",
                    "flush_interval_seconds": 0.2,
                },
            }
        )
    )
    env = {**aws_environment(f"http://127.0.0.1:{dead}"), "AWS_MAX_ATTEMPTS": "1"}
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        pool=pool,
        broker_url=redis_url,
        queue="hooks",
        concurrency=4,
        env=env,
        extra_args=["--config", str(config)],
    )
    client = procs.client(broker_url=redis_url, queue="hooks")
    tally = Tally(f"callback receiver + Firehose sink down ({pool} c=4, {count} tasks)")
    submit_all(client, tally, [{"args": {"n": n}} for n in range(count)])
    tally.wait(redis_url, timeout=60)
    tally.model_calls = echo.stats()["predict_requests"]
    assert worker.stop(signal.SIGTERM, timeout=30) == 0
    tally.report()
    log = worker.log()
    assert tally.lost == [], tally.line()
    assert tally.states() == {"SUCCESS": count}, tally.failures()
    assert tally.duplicates == 0, tally.line()
    for task_id, meta in tally.stored.items():
        n = tally.submitted.index(task_id)
        assert meta["result"] == {"result": f'{{"n": {n}}}', "status_code": 200}
    callback = hook_totals(log, "callback")
    assert callback == {"attempts": count, "successes": 0, "failures": count}, callback
    # The logging hook hands records to the sink; the sink's failed sends are its own count.
    logging_hook = hook_totals(log, "logging")
    sink = sink_totals(log)
    print(f"  callback={callback} logging hook={logging_hook} firehose sink={sink}")
    assert logging_hook["attempts"] == count, logging_hook
    assert sink.get("dropped") == count, sink
    assert sink.get("sent", 0) == 0, sink
