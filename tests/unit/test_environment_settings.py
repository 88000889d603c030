"""Settings read from variables other libraries know (AWS region, CA bundle) and the client's
gateway: read once by ``load_settings`` and handed to the code that uses them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.celery_ext.brokers import celery_app
from forwarder.client.idempotency import S3Store, open_store
from forwarder.config.settings import AwsSettings, ClientSettings, load_settings
from forwarder.errors import ConfigError
from forwarder.hooks.sinks import build_sink
from forwarder.hooks.sinks.firehose import FirehoseSink
from forwarder.worker.forwarding import Forwarder

SQS = {"--sqs-url": "http://127.0.0.1:1/123456789012/inference"}


@pytest.fixture(autouse=True)
def _aws_without_a_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for building clients (no call is made), and no region but the test's."""
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------ aws.region


@pytest.mark.parametrize(
    ("env", "overrides", "region"),
    [
        ({}, [], None),
        ({}, ["aws.region=ca-central-1"], "ca-central-1"),
        ({"AWS_REGION": "eu-west-1"}, ["aws.region=ca-central-1"], "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "us-west-2", "AWS_REGION": "eu-west-1"}, [], "us-west-2"),
        ({"AWS_DEFAULT_REGION": " ", "AWS_REGION": "eu-west-1"}, [], "eu-west-1"),
    ],
)
def test_the_region_comes_from_boto3s_variable_then_the_other_then_the_file(
    env: dict[str, str], overrides: list[str], region: str | None
) -> None:
    assert load_settings(env=env, overrides=overrides).aws == AwsSettings(region=region)


def test_the_region_reaches_the_sqs_transport_and_the_s3_results(tmp_path: Path) -> None:
    flags = {**SQS, "--result-backend": "s3://results"}
    settings = load_settings(env={"AWS_REGION": "eu-west-1"}, flags=flags)
    app = celery_app(settings)
    assert app.conf.broker_transport_options["region"] == "eu-west-1"
    assert app.backend.client.meta.region_name == "eu-west-1"
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert store.client.meta.region_name == "eu-west-1"
    store.close()


def test_the_region_reaches_the_firehose_sink_unless_logging_names_its_own() -> None:
    firehose = ["logging.sink=firehose", "logging.stream_name=records"]
    for extra, expected in (([], "eu-west-1"), (["logging.region=ap-south-1"], "ap-south-1")):
        settings = load_settings(env={"AWS_REGION": "eu-west-1"}, overrides=[*firehose, *extra])
        sink = build_sink(settings)
        assert isinstance(sink, FirehoseSink)
        try:
            assert sink.client.get().meta.region_name == expected
        finally:
            sink.close()


def test_without_a_region_the_firehose_sink_stops_start_up() -> None:
    settings = load_settings(env={}, overrides=["logging.sink=firehose", "logging.stream_name=s"])
    with pytest.raises(ConfigError) as raised:
        build_sink(settings)
    assert raised.value.key == "logging.region"


# ----------------------------------------------------------------------- forwarder.async.ca_bundle


@pytest.mark.parametrize(
    ("env", "overrides", "bundle"),
    [
        ({}, [], None),
        ({}, ["forwarder.async.ca_bundle=/etc/file-ca.pem"], "/etc/file-ca.pem"),
        ({"CURL_CA_BUNDLE": "/etc/curl.pem"}, ["forwarder.async.ca_bundle=/x.pem"], "/etc/curl.pem"),
        ({"REQUESTS_CA_BUNDLE": "/etc/req.pem", "CURL_CA_BUNDLE": "/etc/curl.pem"}, [], "/etc/req.pem"),
    ],
)  # fmt: skip
def test_the_ca_bundle_is_requests_then_curls_then_the_files(
    env: dict[str, str], overrides: list[str], bundle: str | None
) -> None:
    assert load_settings(env=env, overrides=overrides).model.ca_bundle == bundle


@pytest.mark.parametrize("bundle", [None, "/etc/model-ca.pem"])
def test_the_model_calls_trust_the_configured_bundle(bundle: str | None) -> None:
    env = {} if bundle is None else {"REQUESTS_CA_BUNDLE": bundle}
    model = load_settings(env=env).model
    forwarder = Forwarder(model, connect_timeout=1.0, read_timeout=1.0, pool_size=1)
    trusted = forwarder.session().connection_pool_kw["ca_certs"]
    if bundle is None:
        import certifi

        assert trusted == certifi.where()
    else:
        assert trusted == bundle


# -------------------------------------------------------------------------------- client.gateway


def test_the_gateway_url_and_token_come_from_flag_then_variable_then_file() -> None:
    sets = ["client.gateway_url=http://127.0.0.1:1", "client.gateway_token=file-token"]
    env = {"FORWARDER_GATEWAY_URL": "http://127.0.0.1:2", "FORWARDER_GATEWAY_TOKEN": "env-token"}
    flags = {"--gateway-url": "http://127.0.0.1:3", "--token": "flag-token"}
    assert load_settings(env={}, overrides=sets).client == ClientSettings(
        "http://127.0.0.1:1", "file-token"
    )
    assert load_settings(env=env, overrides=sets).client == ClientSettings(
        "http://127.0.0.1:2", "env-token"
    )
    from_flags = load_settings(env=env, overrides=sets, flags=flags)
    assert from_flags.client == ClientSettings("http://127.0.0.1:3", "flag-token")
    assert from_flags.sources["client.gateway_url"] == "--gateway-url"


def test_the_gateway_token_stays_out_of_repr() -> None:
    settings = load_settings(env={"FORWARDER_GATEWAY_TOKEN": "env-token-0123456789"})
    assert "env-token-0123456789" not in repr(settings)
