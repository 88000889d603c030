"""A claimer that dies between its claim and its send does not strand the key: against a real
redis-server, moto's S3 server and the embedded folder's store, a claimer process killed inside
``send``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forwarder.client.idempotency import (
    FileStore,
    IdempotencyStore,
    RedisStore,
    S3Store,
    scoped_key,
    submit_once,
)
from support.aws import MotoServer

pytestmark = pytest.mark.integration

LEASE = 3.0  # long enough for the retry below to come within it on a loaded machine
RETENTION = 3600.0
FINGERPRINT = "f" * 64

# Claims the key, then dies inside send: the task is never queued and nothing is released.
CRASHING_CLAIMER = """
import os, sys
from pathlib import Path
from forwarder.client.idempotency import FileStore, RedisStore, S3Store, submit_once
kind, where, key, lease = sys.argv[1:5]
stores = {"redis": RedisStore, "s3": S3Store, "file": lambda where: FileStore(Path(where))}
store = stores[kind](where)
def send(task_id):
    print(task_id, flush=True)
    os._exit(9)
submit_once(store, key, "f" * 64, 3600.0, send, float(lease))
"""


def _crash_after_claim(kind: str, where: str, key: str) -> str:
    died = subprocess.run(
        [sys.executable, "-c", CRASHING_CLAIMER, kind, where, key, str(LEASE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr
    return died.stdout.strip()


@pytest.fixture(params=["redis", "s3", "file"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "redis":
        return "redis", str(request.getfixturevalue("redis_url"))
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_here")
        bucket = f"lease-{uuid.uuid4().hex[:12]}"
        moto.client("s3").create_bucket(Bucket=bucket)
        return "s3", f"s3://{bucket}/results"
    return "file", str(tmp_path / "keys")


def _open(kind: str, where: str) -> IdempotencyStore:
    if kind == "redis":
        return RedisStore(where)
    return S3Store(where) if kind == "s3" else FileStore(Path(where))


def test_a_retry_after_the_lease_sends_the_stranded_claim(store_at: tuple[str, str]) -> None:
    kind, where = store_at
    key = scoped_key("order-7")
    sent: list[str] = []

    def send(task_id: str) -> str:
        sent.append(task_id)
        return task_id

    store = _open(kind, where)
    claimed = _crash_after_claim(kind, where, key)
    try:
        # Within the lease the claimer may still be sending: the claim's id, nothing sent.
        assert submit_once(store, key, FINGERPRINT, RETENTION, send, LEASE) == (claimed, False)
        assert sent == []
        time.sleep(LEASE + 0.5)
        # Past it: sent now, under the id claimed (before: "replayed" for 24 h, never queued).
        assert submit_once(store, key, FINGERPRINT, RETENTION, send, LEASE) == (claimed, True)
        assert sent == [claimed]
        time.sleep(LEASE + 0.5)
        # Sent once marked: later retries replay it, however late.
        assert submit_once(store, key, FINGERPRINT, RETENTION, send, LEASE) == (claimed, False)
        assert sent == [claimed]
    finally:
        store.close()


def test_of_concurrent_retries_of_a_stranded_claim_one_sends(store_at: tuple[str, str]) -> None:
    kind, where = store_at
    key = scoped_key("order-8")
    claimed = _crash_after_claim(kind, where, key)
    time.sleep(LEASE + 0.5)
    stores = [_open(kind, where) for _ in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            outcomes = list(
                pool.map(
                    lambda n: stores[n].claim(key, f"retry-{n}", FINGERPRINT, RETENTION, 60.0),
                    range(len(stores)),
                )
            )
    finally:
        for store in stores:
            store.close()
    assert [claim.task_id for claim in outcomes] == [claimed] * 8
    assert sum(claim.created for claim in outcomes) == 1
