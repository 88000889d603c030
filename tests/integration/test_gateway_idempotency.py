"""Every idempotency store meets the same bar against its real server: Redis (redis-server), S3
(moto's server) and the file store, through one parametrised fixture.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forwarder.client.idempotency import (
    Claim,
    FileStore,
    IdempotencyStore,
    RedisStore,
    S3Store,
    scoped_key,
)
from support.aws import MotoServer

pytestmark = pytest.mark.integration

BUCKET = "idempotency-test"
CLAIMANTS = 20


@pytest.fixture(params=["redis", "s3", "file"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[IdempotencyStore]:
    made: IdempotencyStore
    if request.param == "redis":
        made = RedisStore(request.getfixturevalue("redis_url"))
    elif request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_here")
        moto.client("s3").create_bucket(Bucket=BUCKET)
        made = S3Store(f"s3://{BUCKET}/results")
    else:
        made = FileStore(tmp_path / "keys")
    try:
        yield made
    finally:
        made.close()


def test_of_concurrent_claims_one_wins(store: IdempotencyStore) -> None:
    key = scoped_key("concurrent")
    barrier = threading.Barrier(CLAIMANTS)

    def claim(n: int) -> Claim:
        barrier.wait(timeout=10)
        return store.claim(key, f"task-{n}", "fp", 60)

    with ThreadPoolExecutor(CLAIMANTS) as pool:
        claims = list(pool.map(claim, range(CLAIMANTS)))
    assert sum(c.created for c in claims) == 1
    assert len({c.task_id for c in claims}) == 1


def test_a_claim_lives_for_its_retention_then_yields(store: IdempotencyStore) -> None:
    key = scoped_key("retention")
    assert store.claim(key, "first", "fp-1", 1.0).created
    kept = store.claim(key, "second", "fp-2", 1.0)
    assert (kept.task_id, kept.fingerprint, kept.created) == ("first", "fp-1", False)
    time.sleep(1.2)
    replaced = store.claim(key, "third", "fp-3", 1.0)
    assert (replaced.task_id, replaced.created) == ("third", True)


def test_release_frees_only_the_callers_own_claim(store: IdempotencyStore) -> None:
    key = scoped_key("release")
    store.claim(key, "mine", "fp", 60)
    store.release(key, "not-mine")
    assert store.claim(key, "other", "fp", 60).task_id == "mine"
    store.release(key, "mine")
    assert store.claim(key, "other", "fp", 60).created
