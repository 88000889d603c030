"""model-engine's ``--broker-type`` / ``--backend-protocol`` and the environment its celery_app reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.celery_ext.brokers import broker_config
from forwarder.cli.commands import main
from forwarder.config.masking import mask_url
from forwarder.config.settings import load_settings
from forwarder.errors import ConfigError

pytestmark = pytest.mark.usefixtures("no_settings_environment")

REDIS_ENV = {"REDIS_HOST": "redis.internal", "REDIS_PORT": "6379"}
MODEL_ENGINE_ENV = {**REDIS_ENV, "S3_BUCKET": "celery-results"}


def chosen(env: dict[str, str], flags: dict[str, object], tmp_path: Path) -> tuple[str, str, str]:
    flags = {"--data-dir": str(tmp_path), **flags}
    config = broker_config(load_settings(env=env, flags=flags).worker)
    return config.kind, config.broker_url, config.result_backend


@pytest.mark.parametrize(
    ("visibility", "db"),
    [("VISIBILITY_1H", 0), ("VISIBILITY_10M", 1), ("VISIBILITY_1M", 2), ("VISIBILITY_24H", 3)],
)
def test_redis_broker_is_on_the_database_of_the_visibility(
    visibility: str, db: int, tmp_path: Path
) -> None:
    flags = {"--broker-type": "redis", "--task-visibility": visibility}
    kind, broker, results = chosen(MODEL_ENGINE_ENV, flags, tmp_path)
    assert (kind, broker) == ("redis", f"redis://redis.internal:6379/{db}")
    # model-engine's S3 backend: its default protocol, its fixed prefix.
    assert results == "s3://celery-results/tmp/celery/"


def test_an_auth_token_means_tls_and_is_never_shown(tmp_path: Path) -> None:
    env = {**MODEL_ENGINE_ENV, "REDIS_AUTH_TOKEN": "p@ss/word"}
    _, broker, _ = chosen(env, {"--broker-type": "redis"}, tmp_path)
    assert broker == "rediss://:p%40ss%2Fword@redis.internal:6379/3?ssl_cert_reqs=none"
    assert "p%40ss" not in str(mask_url(broker))


def test_redis_results_are_on_database_one(tmp_path: Path) -> None:
    flags = {"--broker-type": "redis", "--backend-protocol": "redis"}
    _, broker, results = chosen(REDIS_ENV, flags, tmp_path)
    assert (broker, results) == ("redis://redis.internal:6379/3", "redis://redis.internal:6379/1")


def test_sqs_broker_type_takes_the_sqs_url_and_s3_results(tmp_path: Path) -> None:
    url = "https://sqs.us-west-2.amazonaws.com/123456789012/queue"
    flags = {"--broker-type": "sqs", "--sqs-url": url, "--queue": "queue"}
    kind, _, results = chosen({"S3_BUCKET": "celery-results"}, flags, tmp_path)
    assert (kind, results) == ("sqs", "s3://celery-results/tmp/celery/")


def test_an_explicit_result_backend_is_kept_with_a_broker_type(tmp_path: Path) -> None:
    flags = {"--broker-type": "redis", "--result-backend": "s3://mine/results"}
    _, _, results = chosen(REDIS_ENV, flags, tmp_path)
    assert results == "s3://mine/results"


def test_nothing_given_is_still_the_embedded_default(tmp_path: Path) -> None:
    assert chosen({}, {}, tmp_path)[0] == "embedded"


def test_an_explicit_broker_url_wins_over_model_engines_environment(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/5"
    assert chosen(MODEL_ENGINE_ENV, {"--broker-url": url}, tmp_path)[:2] == ("redis", url)


@pytest.mark.parametrize(
    ("env", "flags", "key", "named"),
    [
        # model-engine's settings present without a broker: never the embedded broker.
        ({"REDIS_HOST": "h"}, {}, "--broker-type", "REDIS_HOST"),
        ({"S3_BUCKET": "celery-results"}, {}, "--broker-type", "S3_BUCKET"),
        ({"REDIS_AUTH_TOKEN": "t0ken"}, {}, "--broker-type", "REDIS_AUTH_TOKEN"),
        ({"REDIS_HOST": "h"}, {"--broker-type": "redis"}, "REDIS_PORT", "REDIS_HOST"),
        ({"REDIS_PORT": "1"}, {"--broker-type": "redis"}, "REDIS_HOST", "REDIS_PORT"),
        (REDIS_ENV, {"--broker-type": "redis"}, "S3_BUCKET", "--backend-protocol s3"),
        ({}, {"--broker-type": "sqs"}, "--sqs-url", "--broker-type sqs"),
        ({}, {"--backend-protocol": "s3"}, "--backend-protocol", "--broker-type"),
        (
            MODEL_ENGINE_ENV,
            {"--broker-type": "redis", "--broker-url": "redis://x:1/0"},
            "--broker-type",
            "--broker-url",
        ),
        (
            MODEL_ENGINE_ENV,
            {"--broker-type": "redis", "--backend-protocol": "s3", "--result-backend": "s3://mine"},
            "--backend-protocol",
            "--result-backend",
        ),
    ],
)
def test_incomplete_or_contradicting_settings_name_the_keys(
    env: dict[str, str], flags: dict[str, object], key: str, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        chosen(env, flags, tmp_path)
    assert info.value.key.startswith(key)
    assert named in str(info.value)
    assert "t0ken" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no embedded folders were made


@pytest.mark.parametrize(
    ("flag", "value", "name"),
    [("--broker-type", "servicebus", "Azure Service Bus"), ("--backend-protocol", "abs", "Blob")],
)
def test_azure_kinds_exit_2_saying_they_are_not_supported(
    flag: str, value: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", flag, value]) == 2
    error = capsys.readouterr().err
    assert f"{flag}='{value}'" in error and name in error and "not supported" in error


def test_events_are_refused_on_sqs_which_has_no_fanout(tmp_path: Path) -> None:
    url = "https://sqs.us-west-2.amazonaws.com/123456789012/queue"
    flags = {"--sqs-url": url, "--queue": "queue", "--result-backend": "s3://results/r"}
    assert chosen({}, flags, tmp_path)[0] == "sqs"
    with pytest.raises(ConfigError) as info:
        chosen({}, {**flags, "--events": "true"}, tmp_path)
    assert info.value.key == "--events" and "SQS" in info.value.allowed
