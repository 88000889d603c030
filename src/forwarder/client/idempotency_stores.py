"""The idempotency stores: Redis, the embedded folder and S3, each claiming keys atomically.

``forwarder.client.idempotency`` says what a claim is, and picks the store beside the results.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from forwarder.config.parsers import s3_location
from forwarder.errors import ClientError, ConfigError
from forwarder.extras import import_extra
from forwarder.protocol import IDEMPOTENCY_KEY_PREFIX

__all__ = ["DEFAULT_LEASE_SECONDS", "Claim", "ClaimRecord", "FileStore", "RedisStore", "S3Store"]

# How long a claimer has to send its task before a retry may send it instead.
DEFAULT_LEASE_SECONDS = 30.0
# A claim that expires between a refused create and the read of it is tried again, this often.
CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Claim:
    task_id: str
    fingerprint: str
    created: bool  # True: this caller claimed the key (or took it over) and must send the task


@dataclass(frozen=True)
class ClaimRecord:
    task_id: str
    fingerprint: str
    expires_at: float
    sent: bool = True  # a record written before leases existed was written once sent
    lease_until: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    def live(self, now: float) -> bool:
        return self.expires_at > now

    def stranded(self, now: float) -> bool:
        """Never sent, and its claimer's lease has run out."""
        return not self.sent and self.lease_until <= now


def new_record(
    task_id: str, request_fingerprint: str, retention: float, lease: float
) -> ClaimRecord:
    now = time.time()
    return ClaimRecord(
        task_id, request_fingerprint, now + retention, sent=False, lease_until=now + lease
    )


def parsed_record(raw: bytes | str) -> ClaimRecord | None:
    try:
        record = json.loads(raw)
        return ClaimRecord(
            str(record["task_id"]),
            str(record["fingerprint"]),
            float(record["expires_at"]),
            bool(record.get("sent", True)),
            float(record.get("lease_until", 0.0)),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # torn or foreign content: treated as no claim


def lua_script(name: str) -> str:
    return (resources.files("forwarder.client") / "lua" / name).read_text()


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._claim = self.redis.register_script(lua_script("claim.lua"))
        self._mark_sent = self.redis.register_script(lua_script("mark_sent.lua"))
        self._release = self.redis.register_script(lua_script("release_claim.lua"))

    def claim(
        self,
        key: str,
        task_id: str,
        fingerprint: str,
        retention: float,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> Claim:
        record = new_record(task_id, fingerprint, retention, lease)
        retention_ms = max(1, round(retention * 1000))
        outcome, raw = self._claim(
            keys=[key], args=[record.encode(), retention_ms, time.time(), lease]
        )
        found = parsed_record(raw)
        if found is None:
            raise ClientError(f"idempotency key {key} could not be claimed")
        return Claim(found.task_id, found.fingerprint, created=int(outcome) > 0)

    def mark_sent(self, key: str, task_id: str) -> None:
        self._mark_sent(keys=[key], args=[task_id])

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

    def _read(self, path: Path) -> ClaimRecord | None:
        try:
            return parsed_record(path.read_bytes())
        except FileNotFoundError:
            return None

    def _write(self, path: Path, record: ClaimRecord) -> None:
        staged = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        staged.write_bytes(record.encode())
        os.replace(staged, path)  # whole, never torn

    def claim(
        self,
        key: str,
        task_id: str,
        fingerprint: str,
        retention: float,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> Claim:
        path = self._path(key)
        record = new_record(task_id, fingerprint, retention, lease)
        staged = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        staged.write_bytes(record.encode())
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
                now = time.time()
                if existing is None or not existing.live(now):
                    os.replace(staged, path)
                    return Claim(task_id, fingerprint, created=True)
                if existing.stranded(now):
                    self._write(path, replace(existing, lease_until=now + lease))
                    return Claim(existing.task_id, existing.fingerprint, created=True)
                return Claim(existing.task_id, existing.fingerprint, created=False)
        finally:
            staged.unlink(missing_ok=True)

    def mark_sent(self, key: str, task_id: str) -> None:
        path = self._path(key)
        with self._locked(path):
            existing = self._read(path)
            if existing is not None and existing.task_id == task_id:
                self._write(path, replace(existing, sent=True))

    def release(self, key: str, task_id: str) -> None:
        path = self._path(key)
        with self._locked(path):
            existing = self._read(path)
            if existing is not None and existing.task_id == task_id:
                # Expired rather than removed, so the name keeps the invariant claim() needs.
                self._write(path, replace(existing, expires_at=0.0))

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

    def _put(self, name: str, record: ClaimRecord, conditions: dict[str, str]) -> bool:
        """Whether the conditional put of ``record`` won."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=record.encode(), **conditions)
            return True
        except self.client.exceptions.ClientError as exc:
            # 409: another conditional write to the same key was in progress; look again.
            if self._error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            return False

    def _get(self, name: str) -> tuple[ClaimRecord | None, str] | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=name)
        except self.client.exceptions.NoSuchKey:
            return None
        return parsed_record(reply["Body"].read()), str(reply["ETag"])

    def claim(
        self,
        key: str,
        task_id: str,
        fingerprint: str,
        retention: float,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> Claim:
        name = self._object(key)
        conditions: dict[str, str] = {"IfNoneMatch": "*"}
        for _ in range(CLAIM_ATTEMPTS):
            if self._put(name, new_record(task_id, fingerprint, retention, lease), conditions):
                return Claim(task_id, fingerprint, created=True)
            found = self._get(name)
            if found is None:
                conditions = {"IfNoneMatch": "*"}
                continue
            existing, etag = found
            conditions = {"IfMatch": etag}
            now = time.time()
            if existing is None or not existing.live(now):
                continue
            if not existing.stranded(now):
                return Claim(existing.task_id, existing.fingerprint, created=False)
            if self._put(name, replace(existing, lease_until=now + lease), conditions):
                return Claim(existing.task_id, existing.fingerprint, created=True)
        raise ClientError(f"idempotency key {key} could not be claimed")

    def mark_sent(self, key: str, task_id: str) -> None:
        name = self._object(key)
        for _ in range(CLAIM_ATTEMPTS):
            found = self._get(name)
            if found is None or found[0] is None or found[0].task_id != task_id:
                return
            if self._put(name, replace(found[0], sent=True), {"IfMatch": found[1]}):
                return

    def release(self, key: str, task_id: str) -> None:
        name = self._object(key)
        found = self._get(name)
        if found is not None and found[0] is not None and found[0].task_id == task_id:
            with contextlib.suppress(self.client.exceptions.ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=name, IfMatch=found[1])

    def close(self) -> None:
        self.client.close()
