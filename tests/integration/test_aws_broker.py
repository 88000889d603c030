"""SQS broker and S3 result backend, end to end on moto: real workers (both pools), real clients.

The results are read back three ways: by the forwarder's client, by a plain Celery app configured
for Celery's own S3 backend, and as the raw objects in the bucket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from forwarder.protocol import LIRA_TASK_NAME
from support.aws import MotoServer
from support.processes import Processes
from support.waiting import wait_all

pytestmark = [pytest.mark.integration]

QUEUE = "inference"
BUCKET = "results"
PREFIX = "forwarder/tasks"


@pytest.fixture
def aws(moto_here: MotoServer) -> MotoServer:
    """moto, also behind this process's AWS clients (the forwarder's client reads the env)."""
    return moto_here


@pytest.fixture
def plain_celery(aws: MotoServer) -> Iterator[Celery]:
    """A Celery app that knows nothing of the forwarder: Celery's own S3 backend."""
    app = Celery("plain", set_as_current=False)
    app.conf.update(
        result_backend="s3",
        s3_bucket=BUCKET,
        s3_base_path=f"{PREFIX}/",
        s3_endpoint_url=aws.endpoint_url,
        s3_region=aws.region,
        accept_content=["json"],
        result_accept_content=["json"],
    )
    yield app
    app.close()


def stored_object(aws: MotoServer, task_id: str) -> dict[str, Any]:
    reply = aws.client("s3").get_object(
        Bucket=BUCKET, Key=f"{PREFIX}/celery-task-meta-{task_id}", ChecksumMode="ENABLED"
    )
    return {"meta": json.loads(reply["Body"].read()), "sha256": reply.get("ChecksumSHA256")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("pool", "checksum"), [("prefork", True), ("gevent", False)], ids=["prefork", "gevent"]
)
def test_sqs_worker_stores_results_in_s3(
    pool: str,
    checksum: bool,
    aws: MotoServer,
    plain_celery: Celery,
    procs: Processes,
) -> None:
    queue_url = aws.client("sqs").create_queue(QueueName=QUEUE)["QueueUrl"]
    aws.client("s3").create_bucket(Bucket=BUCKET)
    backend = f"s3://{BUCKET}/{PREFIX}" + ("?checksum=sha256" if checksum else "")
    aws_flags = {"--sqs-url": queue_url, "--result-backend": backend}

    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool=pool,
        queue=QUEUE,
        concurrency=2,
        env=aws.env,
        extra_args=[item for pair in aws_flags.items() for item in pair],
    )
    client = procs.client(queue=QUEUE, extra_flags=aws_flags)

    payloads = [{"args": {"n": n}} for n in range(4)]
    ids = [client.submit(payload) for payload in payloads]
    # Not a JSON object: the worker refuses it (PayloadError), failing that task alone.
    failing = client.app.send_task(LIRA_TASK_NAME, args=[[1, 2], None], queue=QUEUE).id
    done = wait_all(client, [*ids, failing], timeout=30)

    expected = [{"result": json.dumps(p["args"]), "status_code": 200} for p in payloads]
    assert [(done[t].status, done[t].result) for t in ids] == [("SUCCESS", e) for e in expected]
    assert done[failing].status == "FAILURE"
    assert done[failing].error is not None and "JSON object" in done[failing].error

    # A plain Celery client, configured for Celery's own S3 backend, reads the same results.
    for task_id, want in zip(ids, expected, strict=True):
        assert AsyncResult(task_id, app=plain_celery).get(timeout=10) == want
    plain_failure = AsyncResult(failing, app=plain_celery)
    assert plain_failure.state == "FAILURE"
    assert "JSON object" in str(plain_failure.result)

    # The failure's stored meta carries model-engine's custom error payload.
    failure = stored_object(aws, failing)
    assert failure["meta"]["status"] == "FAILURE"
    assert failure["meta"]["result"]["exc_type"] == "PayloadError"
    custom = json.loads(failure["meta"]["result"]["custom"])
    assert "JSON object" in custom["error"]
    assert custom["error_metadata"].startswith("Internal failure\n")

    assert (stored_object(aws, ids[0])["sha256"] is not None) is checksum

    unknown = str(uuid.uuid4())
    assert client.get(unknown).status == "PENDING"
    assert AsyncResult(unknown, app=plain_celery).state == "PENDING"
