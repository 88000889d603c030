"""The Kubernetes manifests under deploy/kubernetes: valid against Kubernetes' schemas (offline,
kubernetes-validate, unknown fields rejected) and KEDA's objects against
tests/unit/data/keda-v1alpha1.schema.json; consistent with each other and with what the worker
accepts and serves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from forwarder.cli.commands import main as forwarder_main
from forwarder.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = json.loads((Path(__file__).parent / "data" / "keda-v1alpha1.schema.json").read_text())
# The oldest Kubernetes these manifests are for, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())


def _validate(document: dict[str, Any]) -> None:
    """Raises a jsonschema.ValidationError naming the field that is wrong."""
    if document["apiVersion"].startswith("keda.sh/"):
        jsonschema.Draft202012Validator(KEDA_SCHEMA).validate(document)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for d in _load(path.name)
        if d["kind"] == kind and (name is None or path.name == name)
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(name: str) -> dict[str, Any]:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == name]
    return dict(container)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    config = tmp_path_factory.mktemp("config") / "forwarder.yaml"
    config.write_text(_one("ConfigMap")["data"]["forwarder.yaml"])
    return load_settings(config, env={})


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_every_manifest_is_valid_against_its_schema(name: str) -> None:
    documents = _load(name)
    assert documents, name
    for document in documents:
        _validate(document)


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("Deployment", lambda d: d["spec"].update(replica=1), "replica"),
        ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavailable=[1]), "maxUnavailable"),
        (
            "ScaledObject",
            lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=32),
            "32",
        ),
        ("ScaledObject", lambda d: d["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
        ("ScaledObject", lambda d: d["spec"].update(minReplicas=1), "minReplicas"),
    ],
)
def test_a_wrong_field_fails_validation_naming_it(kind: str, change: Any, field: str) -> None:
    document = _one(kind, "keda-redis.yaml" if kind == "ScaledObject" else None)
    change(document)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(field)):
        _validate(document)


def test_the_config_map_holds_a_config_the_worker_loads(settings: Settings) -> None:
    assert settings.worker.pool == "gevent"
    assert settings.model.user_hostname == "localhost"
    pod = _one("Deployment")["spec"]["template"]["spec"]
    # The grace period outlasts the longest model call, so SIGTERM is a warm shutdown.
    assert pod["terminationGracePeriodSeconds"] > settings.worker.model_timeout_seconds
    model = _container("model")
    probe = model["readinessProbe"]["httpGet"]
    assert probe["path"] == settings.model.healthcheck_route
    ports = {p["name"]: p["containerPort"] for p in model["ports"]}
    assert ports[probe["port"]] == settings.model.user_port


def test_the_model_outlives_the_forwarder_within_the_grace_period(settings: Settings) -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    command = _container("model")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    script = command[2]
    # It waits for the forwarder's metrics port to close, for less than the grace period.
    metrics_port = _container("forwarder")["args"]
    assert f'("127.0.0.1", {metrics_port[metrics_port.index("--metrics-port") + 1]})' in script
    (bound,) = re.findall(r"time.monotonic\(\) \+ (\d+)", script)
    grace = pod["terminationGracePeriodSeconds"]
    assert settings.worker.model_timeout_seconds < int(bound) < grace
    compile(script, "preStop", "exec")


def test_the_forwarder_container_starts_a_worker_the_command_line_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    forwarder = _container("forwarder")
    args = list(forwarder["args"])
    assert args[0] == "worker"
    config_path = args[args.index("--config") + 1]
    (mount,) = [m for m in forwarder["volumeMounts"] if config_path.startswith(m["mountPath"])]
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = _one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    local = tmp_path / Path(config_path).name
    local.write_text(config_map["data"][Path(config_path).relative_to(mount["mountPath"]).name])
    args[args.index("--config") + 1] = str(local)
    for variable in forwarder["env"]:
        monkeypatch.setenv(variable["name"], "redis://:secret@redis.default.svc:6379/0")
    assert forwarder_main(["check-config", *args[1:]]) == 0
    effective = yaml.safe_load(capsys.readouterr().out)
    metrics_port = effective["worker"]["metrics_port"]
    ports = {p["name"]: p["containerPort"] for p in forwarder["ports"]}
    assert ports["metrics"] == metrics_port
    service = _one("Service")
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == metrics_port
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)


def test_selectors_and_references_point_at_the_deployment() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selected = [
        deployment["spec"]["selector"]["matchLabels"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one("Service")["spec"]["selector"],
    ]
    for selector in selected:
        assert selector.items() <= labels.items(), selector
    account = _one("ServiceAccount")["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account


@pytest.mark.parametrize("name", ["keda-redis.yaml", "keda-sqs.yaml"])
def test_the_scaled_objects_scale_the_deployment_on_its_queue(
    name: str, settings: Settings
) -> None:
    scaled = _one("ScaledObject", name)
    assert scaled["spec"]["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    queue, concurrency = settings.worker.queue, settings.worker.concurrency
    for trigger in scaled["spec"]["triggers"]:
        metadata = trigger["metadata"]
        if trigger["type"] == "redis":
            assert metadata["listName"] == queue
            assert int(metadata["listLength"]) == concurrency
        elif trigger["type"] == "aws-sqs-queue":
            assert metadata["queueURL"].rsplit("/", 1)[1] == queue
            assert int(metadata["queueLength"]) == concurrency
            auth = _one("TriggerAuthentication")["metadata"]["name"]
            assert trigger["authenticationRef"]["name"] == auth
        elif trigger["type"] == "prometheus":
            assert f'queue="{queue}"' in metadata["query"]
            assert 0 < int(metadata["threshold"]) <= concurrency
        else:
            pytest.fail(f"unexpected trigger type {trigger['type']}")


def test_the_prometheus_trigger_reads_a_metric_the_worker_serves() -> None:
    (query,) = [
        t["metadata"]["query"]
        for t in _one("ScaledObject", "keda-redis.yaml")["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
    wanted = re.findall(r"(forwarder_\w+)\{queue=\"([^\"]+)\"\}", query)
    assert wanted, query
    # A fresh interpreter: the recorder registers its metrics in the process-wide registry.
    script = (
        "from prometheus_client import generate_latest\n"
        "from forwarder.observability.metrics import PrometheusRecorder\n"
        f"PrometheusRecorder().in_flight({wanted[0][1]!r}, 1)\n"
        "print(generate_latest().decode())\n"
    )
    exposition = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for metric, queue in wanted:
        assert re.search(rf'^{metric}\{{[^}}]*queue="{queue}"', exposition, re.MULTILINE), metric
