"""Broker and result-backend selection: embedded (filesystem), Redis, SQS; and the Celery app."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from forwarder.celery_ext import brokers
from forwarder.celery_ext.brokers import BrokerConfig, broker_config, celery_app
from forwarder.config.settings import Settings, WorkerSettings, load_settings
from forwarder.errors import ConfigError

REDIS = "redis://127.0.0.1:6379/0"
SQS_URL = "http://127.0.0.1:5000/123456789012/inference"

VISIBILITY = [
    ("VISIBILITY_1M", 60),
    ("VISIBILITY_10M", 600),
    ("VISIBILITY_1H", 3600),
    ("VISIBILITY_24H", 86400),
]


@pytest.fixture(autouse=True)
def _no_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)


# -------------------------------------------------------------------------------------- embedded


def test_embedded_is_the_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = broker_config(WorkerSettings(data_dir=data_dir))
    assert config.kind == "embedded"
    assert config.broker_url.startswith("filesystem://")
    for name in ("queue", "control", "results"):
        assert (data_dir / name).is_dir()
    assert config.result_backend == f"file://{data_dir / 'results'}"
    options = config.transport_options
    assert options["data_folder_in"] == str(data_dir / "queue")
    assert options["data_folder_out"] == str(data_dir / "queue")
    assert options["control_folder"] == str(data_dir / "control")
    assert options["polling_interval"] == brokers.EMBEDDED_POLLING_INTERVAL
    assert 0 < options["polling_interval"] <= 0.5


def test_embedded_folders_are_created_under_nested_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b" / "c"
    broker_config(WorkerSettings(data_dir=data_dir))
    assert sorted(p.name for p in data_dir.iterdir()) == ["control", "queue", "results"]


def test_embedded_existing_folders_are_reused(tmp_path: Path) -> None:
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "message.msg").write_text("kept", encoding="utf-8")
    first = broker_config(WorkerSettings(data_dir=tmp_path))
    second = broker_config(WorkerSettings(data_dir=tmp_path))
    assert first == second
    assert (tmp_path / "queue" / "message.msg").read_text(encoding="utf-8") == "kept"


def test_embedded_data_dir_is_expanded_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = broker_config(WorkerSettings(data_dir=Path("~/fwd")))
    root = (tmp_path / "fwd").resolve()
    assert (root / "queue").is_dir()
    assert config.result_backend == f"file://{root / 'results'}"
    assert Path(config.transport_options["data_folder_in"]).is_absolute()

    monkeypatch.chdir(tmp_path)
    relative = broker_config(WorkerSettings(data_dir=Path("rel")))
    assert relative.transport_options["control_folder"] == str(tmp_path.resolve() / "rel/control")


def test_embedded_with_an_explicit_result_backend(tmp_path: Path) -> None:
    config = broker_config(WorkerSettings(data_dir=tmp_path, result_backend=REDIS))
    assert config.kind == "embedded"
    assert config.result_backend == REDIS


def test_embedded_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        broker_config(WorkerSettings(data_dir=blocker))
    assert "data_dir" in info.value.key.replace("-", "_")
    assert info.value.value == str(blocker)
    assert "writable folder" in info.value.allowed
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------------------- redis


@pytest.mark.parametrize(("visibility", "seconds"), VISIBILITY)
def test_redis_visibility_timeout(visibility: str, seconds: int, tmp_path: Path) -> None:
    worker = WorkerSettings(broker_url=REDIS, task_visibility=visibility, data_dir=tmp_path)
    config = broker_config(worker)
    assert config == BrokerConfig(
        kind="redis",
        broker_url=REDIS,
        result_backend=REDIS,
        transport_options={"visibility_timeout": seconds, "max_connections": 10},
    )
    assert list(tmp_path.iterdir()) == []  # no embedded folders for a real broker


@pytest.mark.parametrize(("concurrency", "connections"), [(1, 10), (6, 10), (7, 11), (64, 68)])
def test_redis_pool_fits_the_concurrency(concurrency: int, connections: int) -> None:
    config = broker_config(WorkerSettings(broker_url=REDIS, concurrency=concurrency))
    assert config.transport_options["max_connections"] == connections


def test_redis_results_default_to_the_broker(tmp_path: Path) -> None:
    config = broker_config(WorkerSettings(broker_url="rediss://:pw@cache:6380/2"))
    assert config.result_backend == "rediss://:pw@cache:6380/2"


def test_redis_with_another_result_backend() -> None:
    worker = WorkerSettings(broker_url=REDIS, result_backend="redis://127.0.0.1:6379/1")
    config = broker_config(worker)
    assert config.broker_url == REDIS
    assert config.result_backend == "redis://127.0.0.1:6379/1"


def test_redis_from_loaded_settings() -> None:
    settings = load_settings(
        env={"FORWARDER_BROKER_URL": REDIS}, flags={"--task-visibility": "VISIBILITY_10M"}
    )
    config = broker_config(settings.worker)
    assert (config.kind, config.result_backend) == ("redis", REDIS)
    assert config.transport_options["visibility_timeout"] == 600


# ------------------------------------------------------------------------------------------- sqs


@pytest.mark.parametrize(("visibility", "seconds"), VISIBILITY)
def test_sqs_predefined_queue(visibility: str, seconds: int) -> None:
    worker = WorkerSettings(
        sqs_url=SQS_URL, result_backend=REDIS, queue="inference-q", task_visibility=visibility
    )
    config = broker_config(worker)
    assert config.kind == "sqs"
    assert config.broker_url == "sqs://"
    assert config.result_backend == REDIS
    assert config.transport_options == {
        "predefined_queues": {
            "inference-q": {"url": SQS_URL, "visibility_timeout": seconds},
            # Sent to, never consumed: same account and region as the work queue.
            "inference-q-dead-letter": {
                "url": SQS_URL.rpartition("/")[0] + "/inference-q-dead-letter"
            },
        },
        "polling_interval": brokers.SQS_POLLING_INTERVAL,
    }
    # kombu's 1 s default also applies while every slot is busy, idling a saturated worker.
    assert 0 < brokers.SQS_POLLING_INTERVAL <= 0.1


@pytest.mark.parametrize("variable", ["AWS_DEFAULT_REGION", "AWS_REGION"])
def test_sqs_region_from_the_environment(variable: str) -> None:
    flags = {"--sqs-url": SQS_URL, "--result-backend": REDIS}
    settings = load_settings(env={variable: "eu-west-1"}, flags=flags)
    config = celery_app(settings).conf
    assert config.broker_transport_options["region"] == "eu-west-1"
    assert "predefined_queues" in config.broker_transport_options
    without = broker_config(settings.worker)
    assert "region" not in without.transport_options


def test_sqs_requires_a_result_backend() -> None:
    with pytest.raises(ConfigError) as info:
        broker_config(WorkerSettings(sqs_url=SQS_URL))
    assert info.value.key == "--result-backend"
    assert "result backend" in info.value.allowed
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("queue", ["inference", "Model_endpoint-42", "a" * 80, "orders.fifo"])
def test_sqs_queue_names(queue: str) -> None:
    url = SQS_URL + (".fifo" if queue.endswith(".fifo") else "")
    config = broker_config(WorkerSettings(sqs_url=url, result_backend=REDIS, queue=queue))
    dead_letter = (
        f"{queue[:-5]}-dead-letter.fifo" if url.endswith(".fifo") else f"{queue}-dead-letter"
    )
    assert list(config.transport_options["predefined_queues"]) == [queue, dead_letter]


@pytest.mark.parametrize("queue", ["my.queue", "with space", "a" * 81, "a:b", ".fifo"])
def test_sqs_queue_name_kombu_would_rename_is_rejected(queue: str) -> None:
    with pytest.raises(ConfigError) as info:
        broker_config(WorkerSettings(sqs_url=SQS_URL, result_backend=REDIS, queue=queue))
    assert (info.value.key, info.value.value) == ("--queue", queue)
    assert "SQS queue name" in info.value.allowed


@pytest.mark.parametrize(
    ("queue", "url"), [("orders.fifo", SQS_URL), ("orders", SQS_URL + ".fifo")]
)
def test_sqs_fifo_name_must_match_the_queue(queue: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        broker_config(WorkerSettings(sqs_url=url, result_backend=REDIS, queue=queue))
    assert info.value.key == "--queue"
    assert ".fifo" in info.value.allowed


def test_sqs_url_with_broker_url_is_rejected() -> None:
    worker = WorkerSettings(sqs_url=SQS_URL, broker_url=REDIS, result_backend=REDIS)
    with pytest.raises(ConfigError) as info:
        broker_config(worker)
    assert info.value.key == "--sqs-url"
    assert info.value.value == SQS_URL
    assert "--broker-url" in info.value.allowed


# ------------------------------------------------------------------------------------ celery app


def test_celery_app_speaks_the_wire_protocol(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        Settings(), worker=WorkerSettings(data_dir=tmp_path, queue="q-test")
    )
    app = celery_app(settings)
    try:
        conf = app.conf
        assert conf.task_serializer == "json"
        assert conf.result_serializer == "json"
        assert list(conf.accept_content) == ["json"]
        assert conf.task_acks_late is True
        assert conf.task_reject_on_worker_lost is True
        assert conf.task_track_started is True
        assert conf.worker_prefetch_multiplier == 1
        assert conf.task_default_queue == "q-test"
        expected = broker_config(settings.worker)
        assert conf.broker_url == expected.broker_url
        assert conf.result_backend == expected.result_backend
        assert conf.broker_transport_options == expected.transport_options
        assert app.backend.__class__.__module__ == "forwarder.celery_ext.backends.filesystem"
    finally:
        app.close()


def test_celery_app_over_sqs_with_s3_results() -> None:
    worker = WorkerSettings(
        sqs_url=SQS_URL, result_backend="s3://results/inference", queue="q-test", concurrency=12
    )
    app = celery_app(dataclasses.replace(Settings(), worker=worker))
    try:
        assert app.conf.broker_url == "sqs://"
        assert app.conf.worker_concurrency == 12
        assert app.conf.broker_transport_options["predefined_queues"]["q-test"]["url"] == SQS_URL
        assert app.backend.__class__.__module__ == "forwarder.celery_ext.backends.s3"
        assert app.backend.location.prefix == "inference/"
    finally:
        app.close()
