"""The plain-Celery baseline: the forwarding task as one would write it without this project.

A Celery app with its defaults except JSON and late acks, one task under model-engine's name that
POSTs the payload to the model server through a ``requests.Session`` per process, POSTs the
result to a callback URL if one is set, and writes a record per task to Firehose:

- ``BENCH_FIREHOSE=cached``: one Firehose client per process, from one ``assume_role``;
- ``BENCH_FIREHOSE=per-task``: an STS client, ``assume_role`` and a Firehose client on every task
  (the per-task client churn this project's Firehose sink replaced);
- ``BENCH_FIREHOSE=off``: no record.

A benchmark fixture, configured from ``BENCH_*`` environment variables read at import; AWS
endpoint and credentials come from the usual ``AWS_*`` variables. Each process logs
``baseline firehose: puts=N seconds=S assume_role=K`` when it stops. Started by the harness as

    celery -A baseline_app worker -P gevent -c 32 -Q QUEUE   (in bench/)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import boto3
import requests
from botocore.config import Config
from celery import Celery, signals
from requests.adapters import HTTPAdapter

BROKER_URL = os.environ["BENCH_BROKER_URL"]
MODEL_URL = os.environ["BENCH_MODEL_URL"]
FIREHOSE = os.environ.get("BENCH_FIREHOSE", "off")
STREAM = os.environ.get("BENCH_STREAM", "")
ROLE_ARN = os.environ.get("BENCH_ROLE_ARN", "")
CALLBACK_URL = os.environ.get("BENCH_CALLBACK_URL")
POOL_SIZE = 64

if FIREHOSE not in ("off", "cached", "per-task"):
    raise ValueError(f"BENCH_FIREHOSE={FIREHOSE!r}: expected off, cached or per-task")

app = Celery("baseline", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
)

log = logging.getLogger("baseline")
_lock = threading.Lock()
_session: requests.Session | None = None
_firehose: Any = None
_counts = {"puts": 0, "seconds": 0.0, "assume_role": 0}


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = requests.Session()
        # Sized for the largest concurrency measured, as a careful user would: with requests'
        # default of 10, greenlets past the tenth open and drop a connection per call.
        adapter = HTTPAdapter(pool_maxsize=POOL_SIZE)
        _session.mount("http://", adapter)
        _session.mount("https://", adapter)
    return _session


def new_firehose_client() -> Any:
    credentials = boto3.client("sts").assume_role(
        RoleArn=ROLE_ARN, RoleSessionName="baseline-logging"
    )["Credentials"]
    _counts["assume_role"] += 1
    return boto3.client(
        "firehose",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=Config(max_pool_connections=POOL_SIZE),
    )


def cached_firehose_client() -> Any:
    global _firehose
    with _lock:
        if _firehose is None:
            _firehose = new_firehose_client()
        return _firehose


def write_record(payload: Any, result: dict[str, Any]) -> None:
    started = time.perf_counter()
    client = new_firehose_client() if FIREHOSE == "per-task" else cached_firehose_client()
    record = json.dumps({"request": payload, "response": result}, default=str) + "\n"
    client.put_record(DeliveryStreamName=STREAM, Record={"Data": record.encode()})
    _counts["puts"] += 1
    _counts["seconds"] += time.perf_counter() - started


@app.task(name="ml_serve.celery_service.exec_func")
def exec_func(payload: Any, arrival_timestamp: Any = None, *args: Any, **kwargs: Any) -> Any:
    body = payload.get("args", payload) if isinstance(payload, dict) else payload
    reply = session().post(MODEL_URL, json=body, timeout=30)
    result = {"result": reply.json(), "status_code": reply.status_code}
    if CALLBACK_URL:
        session().post(CALLBACK_URL, json=result, timeout=30)
    if FIREHOSE != "off":
        write_record(payload, result)
    return result


def report(**_: Any) -> None:
    log.warning(
        "baseline firehose: puts=%d seconds=%.3f assume_role=%d",
        _counts["puts"],
        _counts["seconds"],
        _counts["assume_role"],
    )


# Prefork children run the tasks and stop one by one; a gevent worker is one process.
signals.worker_process_shutdown.connect(report, weak=False)
signals.worker_shutdown.connect(report, weak=False)
