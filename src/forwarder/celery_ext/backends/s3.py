"""S3 result backend: one boto3 client per process, Celery's key layout, ``custom`` on failure.

URL: ``s3://BUCKET[/PREFIX][?checksum=sha256]``. Each result is one object,
``PREFIX/celery-task-meta-<task id>``, holding the JSON Celery stores; a task with no object yet
is PENDING. ``checksum=sha256`` has S3 check every stored result against its SHA-256 (without it,
boto3's default CRC32 applies); boto3 checks the stored checksum again on every read. The
region is the settings' ``aws.region`` (Celery's ``s3_region``); endpoint and credentials come
from the standard AWS environment (``AWS_ENDPOINT_URL``, ...), read when the client is built.

Permissions: readers need ``s3:GetObject`` and ``s3:ListBucket``; the worker also ``s3:PutObject``
(Celery reads a result before writing it, so that a SUCCESS is never overwritten). Without
``ListBucket``, S3 answers a missing object with 403 rather than 404: an error, not PENDING.

The layout is that of Celery's own S3 backend, so a plain Celery client reads the results with
``result_backend="s3"``, ``s3_bucket="BUCKET"``, ``s3_base_path="PREFIX/"`` (the trailing slash
matters: Celery joins it to the key as is) and, off AWS, ``s3_endpoint_url``.

STARTED and a cancel's CANCELED are conditional puts (``If-Match`` the ETag read, or
``If-None-Match: *`` where there was no object), so neither lands over a write it did not see
(S3 has honoured both since 2024; a store without them would need a lock of its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import ImproperlyConfigured

from forwarder.celery_ext.backends.base import ForwarderBackendMixin
from forwarder.config.parsers import Invalid, s3_location
from forwarder.extras import import_extra
from forwarder.process_local import ProcessLocal

__all__ = ["S3Backend"]

# botocore's default pool of 10 connections would turn away the extra greenlets of a larger
# gevent worker (each discarded connection logs a warning); prefork children use one each.
MIN_POOL_CONNECTIONS = 10
_LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict")


def _boto3() -> Any:
    return import_extra(
        "boto3", "aws", lambda hint: ImproperlyConfigured(f"the S3 result backend needs {hint}")
    )


class S3Backend(ForwarderBackendMixin, KeyValueStoreBackend):  # type: ignore[misc]
    """Results as S3 objects, through one boto3 client shared by every thread and greenlet."""

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url=url, **kwargs)
        if not url:
            raise ImproperlyConfigured("the S3 result backend needs a URL: s3://BUCKET[/PREFIX]")
        try:
            self.location = s3_location(url)
        except Invalid as exc:
            raise ImproperlyConfigured(f"result backend {url!r}: allowed: {exc}") from None
        _boto3()  # at start-up (the worker builds its backend then), not at the first result
        self._client: ProcessLocal[Any] = ProcessLocal(lambda: self._new_client())

    @property
    def client(self) -> Any:
        """This process's boto3 S3 client; a forked child builds its own, never its parent's."""
        return self._client.get()

    def _new_client(self) -> Any:
        boto3 = _boto3()
        from botocore.config import Config

        pool = max(MIN_POOL_CONNECTIONS, self.app.conf.worker_concurrency or 0)
        # A session of its own: boto3's default session is not safe to build from two threads.
        session = boto3.session.Session(region_name=self.app.conf.s3_region)
        return session.client("s3", config=Config(max_pool_connections=pool))

    def _object_key(self, key: str | bytes) -> str:
        return self.location.prefix + (key.decode() if isinstance(key, bytes) else key)

    def get(self, key: str | bytes) -> bytes | None:
        return self._get_versioned(key)[0]

    def _get_versioned(self, key: str | bytes) -> tuple[bytes | None, str | None]:
        """The object's body and ETag; ``(None, None)`` when there is none."""
        client = self.client
        try:
            reply = client.get_object(Bucket=self.location.bucket, Key=self._object_key(key))
        except client.exceptions.NoSuchKey:
            return None, None
        body: bytes = reply["Body"].read()
        return body, reply.get("ETag")

    def mget(self, keys: list[str | bytes]) -> list[bytes | None]:
        # S3 has no multi-get: one GET per key (the cancel watcher reads one per running task).
        return [self.get(key) for key in keys]

    def _set_if_unchanged(self, key: str | bytes, expected: bytes | None, value: Any) -> bool:
        current, etag = self._get_versioned(key)
        if current != expected:
            return False
        condition = {"IfNoneMatch": "*"} if current is None else {"IfMatch": str(etag)}
        client = self.client
        try:
            self.set(key, value, **condition)
        except client.exceptions.ClientError as exc:
            # 412: another write came first; 409: one is under way (S3 asks for a retry).
            if exc.response.get("Error", {}).get("Code") in _LOST_RACE:
                return False
            raise
        return True

    def set(self, key: str | bytes, value: str | bytes, **condition: str) -> None:
        options = {"ChecksumAlgorithm": "SHA256"} if self.location.checksum == "sha256" else {}
        self.client.put_object(
            Bucket=self.location.bucket,
            Key=self._object_key(key),
            Body=value,
            ContentType=self.content_type,
            **options,
            **condition,
        )

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        """Every stored key starting with ``prefix`` (``s3:ListBucket``), page by page."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix + prefix
        )
        for page in pages:
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.location.prefix) :]

    def delete(self, key: str | bytes) -> None:
        self.client.delete_object(Bucket=self.location.bucket, Key=self._object_key(key))
