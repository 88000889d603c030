"""moto's server mode for the whole session: STS, SQS, S3 and Firehose over HTTP on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder.devtools.localrun import aws_environment, start_moto
from support.servers import running, server_missing

__all__ = ["MotoServer", "moto", "moto_here", "moto_server"]


class MotoServer:
    """moto on 127.0.0.1: ``env`` points a child's AWS clients at it, ``client()`` this process's."""

    region = "us-east-1"

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url
        self.env: dict[str, str | None] = aws_environment(endpoint_url, self.region)

    def client(self, service: str, **kwargs: Any) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            **kwargs,
        )

    def firehose_to_s3(self, stream: str, bucket: str) -> None:
        """A bucket and a delivery stream into it: moto writes each put call there at once."""
        self.client("s3").create_bucket(Bucket=bucket)
        self.client("firehose").create_delivery_stream(
            DeliveryStreamName=stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": "records/",
            },
        )

    def s3_objects(self, bucket: str) -> list[bytes]:
        s3 = self.client("s3")
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ]
        return [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]

    def s3_json_lines(self, bucket: str) -> list[Any]:
        return [json.loads(line) for body in self.s3_objects(bucket) for line in body.splitlines()]

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto in server mode; skipped where it is not installed (an error when CI is set)."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        server_missing("moto or boto3 not installed; install them with: pip install -e '.[dev]'")
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with running("moto server", lambda: start_moto(log_path)) as endpoint_url:
        yield MotoServer(endpoint_url)


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def moto_here(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """``moto``, also behind this test process's AWS clients (they read the environment)."""
    for name, value in moto.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return moto
