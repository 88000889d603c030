"""Idempotent submit: one task per ``Idempotency-Key`` within a retention window.

A key is claimed for a task id before the task is sent, atomically across every gateway replica
and CLI sharing the same store, so of many identical requests one sends the task and the others
get its id. The store sits beside the results the settings select:

- Redis: one script (``lua/claim.lua``) sets the key with ``PX retention`` unless a claim is
  live; the claim expires on its own.
- file (the embedded default): one file per key, created with ``link()`` (which, like ``O_EXCL``,
  fails when the name exists, and publishes the complete content at once). An expired claim is
  replaced under an ``flock`` of the key's lock file, so one claimant wins the replacement. Files
  stay until their key is claimed again (about 200 bytes each).
- S3: a conditional put (``If-None-Match: *``); an expired claim is replaced with ``If-Match`` on
  the ETag read, so again one claimant wins. A lifecycle rule expiring ``<prefix>idempotency/``
  after the retention window keeps the bucket from growing.

A claim records a fingerprint of the request: the same key with a different request is refused
(``IdempotencyKeyReused``) rather than answered with the other request's task.

A claim is marked sent once its task is; until then it holds a lease (``lease`` seconds). A
claimer that dies between its claim and its send leaves an unsent claim: once the lease has run
out, the next request with that key takes the claim over and sends the task, under the id
claimed, instead of being told of a task that was never queued. A request that finds an unsent
claim within its lease gets the claim's id, as it would once sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from forwarder.client.idempotency_stores import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    FileStore,
    RedisStore,
    S3Store,
)
from forwarder.config.settings import Settings
from forwarder.errors import ClientError
from forwarder.protocol import IDEMPOTENCY_KEY_PREFIX

__all__ = [
    "Claim",
    "FileStore",
    "IdempotencyKeyReused",
    "IdempotencyStore",
    "RedisStore",
    "S3Store",
    "fingerprint",
    "open_store",
    "scoped_key",
    "submit_once",
]

MAX_KEY_LENGTH = 255


log = logging.getLogger("forwarder.client.idempotency")


class IdempotencyKeyReused(ClientError):
    """The key was claimed by a request with a different body within the retention window."""


class IdempotencyStore(Protocol):
    def claim(
        self,
        key: str,
        task_id: str,
        fingerprint: str,
        retention: float,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> Claim:
        """Claim ``key`` for ``task_id`` unless a live claim exists; either way, the claim.

        A live claim never sent whose lease has run out is taken over: ``created`` and its id.
        """
        ...

    def mark_sent(self, key: str, task_id: str) -> None:
        """Record that the claim's task was sent: from now on, the key only replays it."""
        ...

    def release(self, key: str, task_id: str) -> None:
        """Drop the claim if it is still ``task_id``'s (its task could not be sent)."""
        ...

    def close(self) -> None: ...


def scoped_key(key: str, principal: str = "") -> str:
    """The store key for a caller's key: hashed, so any text is safe in Redis, S3 and file names.

    ``principal`` keeps the keys of different callers (tokens) apart.
    """
    digest = hashlib.sha256(f"{principal}\0{key}".encode()).hexdigest()
    return f"{IDEMPOTENCY_KEY_PREFIX}{digest}"


def fingerprint(request: Mapping[str, Any]) -> str:
    """The request as given: its payload, with ``ttl_seconds`` / ``timeout_seconds`` if set.

    Top-level nulls count as absent, so a field left out and one sent as null are one request.
    """
    given = {key: value for key, value in request.items() if value is not None}
    canonical = json.dumps(given, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_once(
    store: IdempotencyStore,
    key: str,
    request_fingerprint: str,
    retention: float,
    send: Callable[[str], str],
    lease: float = DEFAULT_LEASE_SECONDS,
) -> tuple[str, bool]:
    """``(task_id, sent)``: send the task if this call claims ``key`` (or takes it over).

    Raises ``IdempotencyKeyReused`` when the key belongs to a different request. If sending
    fails, the claim is dropped so that the caller can try again with the same key.
    """
    claim = store.claim(key, str(uuid.uuid4()), request_fingerprint, retention, lease)
    if claim.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            "Idempotency-Key already used for a different request within the retention window"
        )
    if not claim.created:
        return claim.task_id, False
    try:
        task_id = send(claim.task_id)
    except BaseException:
        store.release(key, claim.task_id)
        raise
    try:
        store.mark_sent(key, claim.task_id)
    except Exception:
        # The task is queued: say so. The claim stays unsent, so a retry after the lease sends
        # it again under the same id: at worst two messages for one task id, never none.
        log.warning("idempotency key %s: task %s sent, not marked sent", key, task_id)
    return task_id, True


def open_store(settings: Settings) -> IdempotencyStore:
    """The store beside the results that ``settings`` select."""
    from forwarder.celery_ext.brokers import broker_config

    results = broker_config(settings.worker).result_backend
    if results.startswith(("redis://", "rediss://")):
        return RedisStore(results)
    if results.startswith("s3://"):
        return S3Store(results, region=settings.aws.region)
    folder = Path(results.removeprefix("file://"))
    return FileStore(folder / "idempotency")
