"""The KEDA examples parse, and scale on what the worker really exposes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import yaml

from forwarder.observability.metrics import PrometheusRecorder

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_example_is_a_scaled_object_with_triggers() -> None:
    files = sorted(DEPLOY.glob("keda-*.yaml"))
    assert [f.name for f in files] == ["keda-redis.yaml", "keda-sqs.yaml"]
    for path in files:
        document = yaml.safe_load(path.read_text())
        assert document["kind"] == "ScaledObject"
        assert document["spec"]["triggers"], path


def test_the_prometheus_trigger_names_a_metric_the_worker_serves() -> None:
    document = yaml.safe_load((DEPLOY / "keda-redis.yaml").read_text())
    (query,) = [
        t["metadata"]["query"] for t in document["spec"]["triggers"] if t["type"] == "prometheus"
    ]
    names = set(re.findall(r"forwarder_\w+", query))
    assert names == {"forwarder_tasks_in_flight"}
    assert '"forwarder_tasks_in_flight"' in inspect.getsource(PrometheusRecorder)
