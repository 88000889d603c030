"""Idempotent submit: one task per ``Idempotency-Key`` within a retention window.

A key is claimed for a task id before the task is sent, atomically across every gateway replica
and CLI sharing the same store, so of many identical requests one sends the task and the others
get its id. The store sits beside the results the settings select:

- Redis: ``SET key value NX PX retention``; the claim expires on its own.
- file (the embedded default): one file per key, created with ``link()`` (which, like ``O_EXCL``,
  fails when the name exists, and publishes the complete content at once). An expired claim is
  replaced under an ``flock`` of the key's lock file, so one claimant wins the replacement. Files
  stay until their key is claimed again (about 200 bytes each).
- S3: a conditional put (``If-None-Match: *``); an expired claim is replaced with ``If-Match`` on
  the ETag read, so again one claimant wins. A lifecycle rule expiring ``<prefix>idempotency/``
  after the retention window keeps the bucket from growing.

A claim records a fingerprint of the request: the same key with a different request is refused
(``IdempotencyKeyReused``) rather than answered with the other request's task.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from forwarder.config.parsers import s3_location
from forwarder.config.settings import Settings
from forwarder.errors import ClientError, ConfigError
from forwarder.extras import import_extra
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
# A claim that expires between a refused create and the read of it is tried again, this often.
CLAIM_ATTEMPTS = 5


class IdempotencyKeyReused(ClientError):
    """The key was claimed by a request with a different body within the retention window."""


@dataclass(frozen=True)
class Claim:
    task_id: str
    fingerprint: str
    created: bool  # True: this caller claimed the key and must send the task


class IdempotencyStore(Protocol):
    def claim(self, key: str, task_id: str, fingerprint: str, retention: float) -> Claim:
        """Claim ``key`` for ``task_id`` unless a live claim exists; either way, the claim."""
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
) -> tuple[str, bool]:
    """``(task_id, sent)``: send the task under a fresh id if this call claims ``key``.

    Raises ``IdempotencyKeyReused`` when the key belongs to a different request. If sending
    fails, the claim is dropped so that the caller can try again with the same key.
    """
    claim = store.claim(key, str(uuid.uuid4()), request_fingerprint, retention)
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
    return task_id, True


def _record(task_id: str, request_fingerprint: str, expires_at: float) -> bytes:
    record = {"task_id": task_id, "fingerprint": request_fingerprint, "expires_at": expires_at}
    return json.dumps(record).encode()


def _parse_record(raw: bytes | str) -> tuple[str, str, float] | None:
    try:
        record = json.loads(raw)
        return str(record["task_id"]), str(record["fingerprint"]), float(record["expires_at"])
    except (ValueError, TypeError, KeyError):
        return None  # torn or foreign content: treated as no claim


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._release = self.redis.register_script(
            (resources.files("forwarder.client") / "lua" / "release_claim.lua").read_text()
        )

    def claim(self, key: str, task_id: str, fingerprint: str, retention: float) -> Claim:
        for _ in range(CLAIM_ATTEMPTS):
            record = _record(task_id, fingerprint, time.time() + retention)
            if self.redis.set(key, record, nx=True, px=max(1, round(retention * 1000))):
                return Claim(task_id, fingerprint, created=True)
            raw = self.redis.get(key)
            existing = _parse_record(raw) if isinstance(raw, bytes) else None
            if existing is not None:
                return Claim(existing[0], existing[1], created=False)
        raise ClientError(f"idempotency key {key} could not be claimed")

    def release(self, key: str, task_id: str) -> None:
        self._release(keys=[key], args=[task_id])

    def close(self) -> None:
        self.redis.close()


class FileStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / key.removeprefix(IDEMPOTENCY_KEY_PREFIX)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: Path) -> tuple[str, str, float] | None:
        try:
            return _parse_record(path.read_bytes())
        except FileNotFoundError:
            return None

    def claim(self, key: str, task_id: str, fingerprint: str, retention: float) -> Claim:
        path = self._path(key)
        staged = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        staged.write_bytes(_record(task_id, fingerprint, time.time() + retention))
        try:
            try:
                os.link(staged, path)
                return Claim(task_id, fingerprint, created=True)
            except FileExistsError:
                pass
            # The name is never removed once made, only replaced under the lock: so a claim seen
            # here under the lock is the one in force.
            with self._locked(path):
                existing = self._read(path)
                if existing is not None and existing[2] > time.time():
                    return Claim(existing[0], existing[1], created=False)
                os.replace(staged, path)
                return Claim(task_id, fingerprint, created=True)
        finally:
            staged.unlink(missing_ok=True)

    def release(self, key: str, task_id: str) -> None:
        path = self._path(key)
        with self._locked(path):
            existing = self._read(path)
            if existing is not None and existing[0] == task_id:
                # Expired rather than removed, so the name keeps the invariant claim() needs.
                path.write_bytes(_record(task_id, existing[1], 0.0))

    def close(self) -> None:
        pass


class S3Store:
    def __init__(self, url: str, *, region: str | None = None) -> None:
        boto3 = import_extra(
            "boto3", "aws", lambda hint: ConfigError("--result-backend", url, f"s3:// with {hint}")
        )
        location = s3_location(url)
        self.bucket = location.bucket
        self.prefix = f"{location.prefix}idempotency/"
        # A session of its own: boto3's default session is not safe to build from two threads.
        session = boto3.session.Session(region_name=region)
        self.client = session.client("s3")

    def _object(self, key: str) -> str:
        return self.prefix + key.removeprefix(IDEMPOTENCY_KEY_PREFIX)

    def _error_code(self, exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def claim(self, key: str, task_id: str, fingerprint: str, retention: float) -> Claim:
        name = self._object(key)
        conditions: dict[str, str] = {"IfNoneMatch": "*"}
        for _ in range(CLAIM_ATTEMPTS):
            body = _record(task_id, fingerprint, time.time() + retention)
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=body, **conditions)
                return Claim(task_id, fingerprint, created=True)
            except self.client.exceptions.ClientError as exc:
                # 409: another conditional write to the same key was in progress; look again.
                if self._error_code(exc) not in (
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                ):
                    raise
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=name)
            except self.client.exceptions.NoSuchKey:
                conditions = {"IfNoneMatch": "*"}
                continue
            existing = _parse_record(reply["Body"].read())
            if existing is not None and existing[2] > time.time():
                return Claim(existing[0], existing[1], created=False)
            conditions = {"IfMatch": reply["ETag"]}
        raise ClientError(f"idempotency key {key} could not be claimed")

    def release(self, key: str, task_id: str) -> None:
        name = self._object(key)
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=name)
        except self.client.exceptions.NoSuchKey:
            return
        existing = _parse_record(reply["Body"].read())
        if existing is not None and existing[0] == task_id:
            with contextlib.suppress(self.client.exceptions.ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=name, IfMatch=reply["ETag"])

    def close(self) -> None:
        self.client.close()


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
