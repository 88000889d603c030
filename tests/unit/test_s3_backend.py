"""The S3 result backend without a network: its URL, key layout, checksum option and client."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from celery import states
from celery.exceptions import ImproperlyConfigured

from forwarder.celery_ext.backends.s3 import S3Backend
from forwarder.celery_ext.brokers import celery_app
from forwarder.config.parsers import Invalid, S3Location, s3_location
from forwarder.config.settings import Settings, WorkerSettings, load_settings
from forwarder.errors import ConfigError, PayloadError

SQS_URL = "http://127.0.0.1:5000/123456789012/inference"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def make_backend(url: str, concurrency: int = 4) -> S3Backend:
    worker = WorkerSettings(sqs_url=SQS_URL, result_backend=url, concurrency=concurrency)
    backend = celery_app(dataclasses.replace(Settings(), worker=worker)).backend
    assert isinstance(backend, S3Backend)
    return backend


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    """Every S3Backend's client is this one, answering only what the test queues up."""
    client = boto3.session.Session().client("s3")
    monkeypatch.setattr(S3Backend, "_new_client", lambda self: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


# ------------------------------------------------------------------------------------------ URL


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://results", S3Location("results", "", None)),
        ("s3://results/", S3Location("results", "", None)),
        ("s3://results/inference", S3Location("results", "inference/", None)),
        ("s3://my.results-1/a/b/", S3Location("my.results-1", "a/b/", None)),
        ("s3://results/p?checksum=sha256", S3Location("results", "p/", "sha256")),
        ("s3://results?checksum=sha256", S3Location("results", "", "sha256")),
    ],
)
def test_url(url: str, location: S3Location) -> None:
    assert s3_location(url) == location


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://Results/prefix",  # bucket names are lower case
        "s3://ab",  # and at least 3 characters
        "s3://results:9000/prefix",
        "s3://user@results/prefix",
        "s3://results/p?checksum=md5",
        "s3://results/p?checksum=",
        "s3://results/p?checksum=sha256&checksum=sha256",
        "s3://results/p?region=eu-west-1",
        "s3://results/p#fragment",
        "redis://results/p",
    ],
)
def test_url_not_allowed(url: str) -> None:
    with pytest.raises(Invalid, match=r"s3://BUCKET\[/PREFIX\]\[\?checksum=sha256\]"):
        s3_location(url)


def test_url_as_a_setting() -> None:
    url = "s3://results/inference?checksum=sha256"
    settings = load_settings(env={"FORWARDER_RESULT_BACKEND": url})
    assert settings.worker.result_backend == url
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, flags={"--result-backend": "s3://results/p?checksum=crc32"})
    assert (info.value.key, info.value.value) == (
        "--result-backend",
        "s3://results/p?checksum=crc32",
    )
    assert "checksum=sha256" in info.value.allowed


def test_backend_refuses_a_bad_url_it_is_given_directly() -> None:
    app = make_backend("s3://results").app
    with pytest.raises(ImproperlyConfigured, match="s3://BUCKET"):
        S3Backend(app=app, url="s3://Bad_Bucket")
    with pytest.raises(ImproperlyConfigured, match="needs a URL"):
        S3Backend(app=app)


# ------------------------------------------------------------------------------ keys and values


def expect_store(stubber: Stubber, key: str, **extra: str) -> None:
    """Celery reads a result before writing it (a SUCCESS is never overwritten), then puts it."""
    stubber.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    put = {"Bucket": "results", "Key": key, "Body": ANY, "ContentType": "application/json"}
    stubber.add_response("put_object", {}, {**put, **extra})


def test_result_key_is_celerys_under_the_prefix(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/inference")
    expect_store(stubbed, "inference/celery-task-meta-abc")
    backend.store_result("abc", {"status_code": 200}, states.SUCCESS)


def test_result_key_without_a_prefix(stubbed: Stubber) -> None:
    backend = make_backend("s3://results")
    expect_store(stubbed, "celery-task-meta-abc")
    backend.store_result("abc", {"status_code": 200}, states.SUCCESS)


def test_sha256_checksum_is_asked_for_on_every_put(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/p?checksum=sha256")
    expect_store(stubbed, "p/celery-task-meta-abc", ChecksumAlgorithm="SHA256")
    backend.store_result("abc", {"status_code": 200}, states.STARTED)


def test_stored_result_is_read_back(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/p")
    raw = json.dumps({"status": "SUCCESS", "result": {"status_code": 200}}).encode()
    stubbed.add_response(
        "get_object",
        {"Body": StreamingBody(io.BytesIO(raw), len(raw))},
        {"Bucket": "results", "Key": "p/celery-task-meta-abc"},
    )
    meta = backend.get_task_meta("abc")
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"status_code": 200})


def test_missing_object_is_pending(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/p")
    stubbed.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    assert backend.get_task_meta("abc") == {"status": states.PENDING, "result": None}


def test_other_errors_are_not_pending(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/p")
    stubbed.add_client_error("get_object", "AccessDenied", http_status_code=403)
    with pytest.raises(backend.client.exceptions.ClientError, match="AccessDenied"):
        backend.get_task_meta("abc")


def test_failure_carries_the_custom_error_payload(stubbed: Stubber) -> None:
    backend = make_backend("s3://results/p")
    stored: dict[str, Any] = {}

    def keep(params: dict[str, Any], **_: Any) -> None:
        stored.update(json.loads(params["Body"]))

    stubbed.client.meta.events.register("before-parameter-build.s3.PutObject", keep)
    expect_store(stubbed, "p/celery-task-meta-abc")
    backend.mark_as_failure("abc", PayloadError("payload must be a JSON object, got list"))
    assert stored["status"] == states.FAILURE
    custom = json.loads(stored["result"]["custom"])
    assert custom["error"] == "payload must be a JSON object, got list"
    assert custom["error_metadata"].startswith("Internal failure\n")


# ---------------------------------------------------------------------------------------- client


def test_one_client_per_process_shared_by_every_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend("s3://results/p")
    built: list[Any] = []
    new_client = S3Backend._new_client

    def counting(self: S3Backend) -> Any:
        built.append(new_client(self))
        return built[-1]

    monkeypatch.setattr(S3Backend, "_new_client", counting)
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(backend.client)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(built) == 1
    assert all(client is built[0] for client in seen)

    # A forked child (another pid) builds its own rather than using its parent's connections.
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert backend.client is not built[0]
    assert len(built) == 2


def test_client_pool_fits_the_worker_concurrency() -> None:
    assert make_backend("s3://results", concurrency=4).client.meta.config.max_pool_connections == 10
    assert (
        make_backend("s3://results", concurrency=50).client.meta.config.max_pool_connections == 50
    )


def test_client_region_and_endpoint_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # boto3's own variable
    flags = {"--sqs-url": SQS_URL, "--result-backend": "s3://results"}
    settings = load_settings(env={"AWS_REGION": "eu-west-1"}, flags=flags)
    client = celery_app(settings).backend.client
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:1"


def test_without_boto3_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'inference-forwarder\[aws\]'"):
        make_backend("s3://results")
