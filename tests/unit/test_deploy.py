"""The KEDA examples parse, and scale on what the worker really exposes."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# Records one task in flight on QUEUE and prints what the worker's metrics endpoint serves.
SCRAPE = textwrap.dedent(
    """
    import socket, sys, urllib.request
    from forwarder.observability import metrics

    queue, multiprocess = sys.argv[1], sys.argv[2] == "prefork"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics.enable(port, "127.0.0.1", multiprocess=multiprocess).in_flight(queue, 1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        print(reply.read().decode())
    """
)


def test_every_example_is_a_scaled_object_with_triggers() -> None:
    files = sorted(DEPLOY.glob("keda-*.yaml"))
    assert [f.name for f in files] == ["keda-redis.yaml", "keda-sqs.yaml"]
    for path in files:
        document = yaml.safe_load(path.read_text())
        assert document["kind"] == "ScaledObject"
        assert document["spec"]["triggers"], path


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_the_prometheus_trigger_names_a_metric_the_worker_serves(pool: str) -> None:
    document = yaml.safe_load((DEPLOY / "keda-redis.yaml").read_text())
    (query,) = [
        t["metadata"]["query"] for t in document["spec"]["triggers"] if t["type"] == "prometheus"
    ]
    names = set(re.findall(r"forwarder_\w+", query))
    assert names == {"forwarder_tasks_in_flight"}
    (selector,) = re.findall(r"forwarder_tasks_in_flight\{[^}]*\}", query)
    queue = re.fullmatch(r'forwarder_tasks_in_flight\{queue="([^"]+)"\}', selector)
    assert queue is not None, selector
    served = subprocess.run(
        [sys.executable, "-c", SCRAPE, queue.group(1), pool],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    # The query's selector is, to the letter, a series the endpoint serves: one task in flight.
    assert f"\n{selector} 1.0\n" in served.stdout, served.stdout
