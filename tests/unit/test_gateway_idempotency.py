"""Idempotency keys on the file store: one claim among concurrent processes, expiry, release.

The Redis and S3 stores meet the same bar against real servers in
tests/integration/test_gateway_idempotency.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forwarder.client.idempotency import (
    FileStore,
    IdempotencyKeyReused,
    RedisStore,
    S3Store,
    fingerprint,
    open_store,
    scoped_key,
    submit_once,
)
from forwarder.config.settings import load_settings
from forwarder.protocol import IDEMPOTENCY_KEY_PREFIX

PROCESSES = 8


# Each claimant is its own interpreter: a claim must hold across processes, not just threads.
CLAIMANT = """
import json, sys, time
from pathlib import Path
from forwarder.client.idempotency import FileStore
folder, key, task_id, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
while time.time() < start_at:
    time.sleep(0.0005)
claim = FileStore(Path(folder)).claim(key, task_id, "fp", 60)
print(json.dumps([claim.task_id, claim.created]))
"""


def _claim_at_once(folder: Path, key: str) -> list[tuple[str, bool]]:
    start_at = time.time() + 2.0  # every interpreter up by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, str(folder), key, f"task-{n}", str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    claims = []
    for child in children:
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        task_id, created = json.loads(out)
        claims.append((task_id, created))
    return claims


def test_concurrent_processes_make_one_claim(tmp_path: Path) -> None:
    claims = _claim_at_once(tmp_path, scoped_key("same"))
    assert sum(created for _, created in claims) == 1
    winner = next(task_id for task_id, created in claims if created)
    assert {task_id for task_id, _ in claims} == {winner}


def test_concurrent_replacements_of_an_expired_claim_make_one(tmp_path: Path) -> None:
    key = scoped_key("expiring")
    FileStore(tmp_path).claim(key, "old", "fp", 0.01)
    time.sleep(0.05)
    claims = _claim_at_once(tmp_path, key)
    assert sum(created for _, created in claims) == 1
    assert len({task_id for task_id, _ in claims}) == 1
    assert "old" not in {task_id for task_id, _ in claims}


def test_a_live_claim_is_kept_and_an_expired_one_replaced(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    key = scoped_key("k")
    first = store.claim(key, "a", "fp-a", 0.2)
    assert (first.task_id, first.created) == ("a", True)
    again = store.claim(key, "b", "fp-b", 0.2)
    assert (again.task_id, again.fingerprint, again.created) == ("a", "fp-a", False)
    time.sleep(0.25)
    later = store.claim(key, "c", "fp-c", 0.2)
    assert (later.task_id, later.created) == ("c", True)
    assert not list(tmp_path.glob("*.tmp"))  # nothing staged is left behind


def test_release_drops_only_the_callers_claim(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    key = scoped_key("k")
    store.claim(key, "a", "fp", 60)
    store.release(key, "someone-else")
    assert store.claim(key, "b", "fp", 60).task_id == "a"
    store.release(key, "a")
    assert store.claim(key, "b", "fp", 60).created


def test_submit_once_sends_once_and_refuses_another_request(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    sent: list[str] = []

    def send(task_id: str) -> str:
        sent.append(task_id)
        return task_id

    first = submit_once(store, scoped_key("k"), fingerprint({"a": 1}), 60, send)
    again = submit_once(store, scoped_key("k"), fingerprint({"a": 1}), 60, send)
    assert first == (sent[0], True)
    assert again == (sent[0], False)
    with pytest.raises(IdempotencyKeyReused):
        submit_once(store, scoped_key("k"), fingerprint({"a": 2}), 60, send)
    assert len(sent) == 1


def test_submit_once_releases_the_key_when_sending_fails(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    def broken(task_id: str) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        submit_once(store, scoped_key("k"), "fp", 60, broken)
    task_id, sent = submit_once(store, scoped_key("k"), "fp", 60, lambda task_id: task_id)
    assert sent and task_id


def test_keys_are_hashed_and_scoped() -> None:
    key = scoped_key("../../etc/passwd")
    assert key.startswith(IDEMPOTENCY_KEY_PREFIX)
    assert "/" not in key and ".." not in key
    assert scoped_key("k", "token-a") != scoped_key("k", "token-b") != scoped_key("k")
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})


def test_the_store_sits_beside_the_results(tmp_path: Path) -> None:
    embedded = open_store(load_settings(env={}, flags={"--data-dir": str(tmp_path)}))
    assert isinstance(embedded, FileStore)
    assert embedded.folder == tmp_path.resolve() / "results" / "idempotency"
    redis = open_store(load_settings(env={}, flags={"--broker-url": "redis://127.0.0.1:1/0"}))
    assert isinstance(redis, RedisStore)
    redis.close()
    s3 = open_store(
        load_settings(
            env={},
            flags={"--broker-url": "redis://127.0.0.1:1/0", "--result-backend": "s3://bkt/pre"},
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("bkt", "pre/idempotency/")
    s3.close()
