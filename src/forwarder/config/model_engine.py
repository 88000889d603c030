"""model-engine's way of naming the broker and result store: ``--broker-type``, ``--backend-protocol``.

model-engine's Helm template starts its forwarder with ``--broker-type redis|sqs|servicebus`` (and
``--backend-protocol abs`` for servicebus; ``s3`` otherwise, by default). Its ``celery_app`` then
builds the Redis endpoint from ``REDIS_HOST``, ``REDIS_PORT`` and ``REDIS_AUTH_TOKEN`` (TLS,
certificates unchecked, when a token is set), on the database numbered by the task visibility, and
stores results under ``tmp/celery/`` in the bucket ``S3_BUCKET``. Here the same settings become
the broker and result-backend URLs the rest of the worker knows. A setting of this kind that is
present without the rest stops start-up: the embedded broker is never picked in its place.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING
from urllib.parse import quote

from forwarder.config.parsers import Invalid
from forwarder.errors import ConfigError

if TYPE_CHECKING:
    from forwarder.config.settings import WorkerSettings

__all__ = [
    "BACKEND_PROTOCOLS",
    "BROKER_TYPES",
    "REDIS_DB_BY_VISIBILITY",
    "REDIS_RESULTS_DB",
    "backend_protocol",
    "broker_type",
    "resolve",
]

BROKER_TYPES = ("redis", "sqs")
BACKEND_PROTOCOLS = ("s3", "redis")
_NOT_SUPPORTED = {"servicebus": "Azure Service Bus", "abs": "Azure Blob Storage"}
# model-engine's TaskVisibility: each visibility timeout has a Redis database of its own, and its
# gateway sends a task to the database of the endpoint's visibility.
REDIS_DB_BY_VISIBILITY = {
    "VISIBILITY_1H": 0,
    "VISIBILITY_10M": 1,
    "VISIBILITY_1M": 2,
    "VISIBILITY_24H": 3,
}
# Its Redis result backend's database, whatever the visibility.
REDIS_RESULTS_DB = 1
_REDIS_KEYS = {"redis_host": "REDIS_HOST", "redis_port": "REDIS_PORT"}
# How an error names a setting: every form it may have been given in.
_NAMES = {
    "broker_url": "--broker-url (FORWARDER_BROKER_URL, worker.broker_url)",
    "result_backend": "--result-backend (FORWARDER_RESULT_BACKEND, worker.result_backend)",
    "redis_host": "REDIS_HOST",
    "redis_port": "REDIS_PORT",
    "redis_auth_token": "REDIS_AUTH_TOKEN",
    "s3_bucket": "S3_BUCKET",
}


def _kind(value: object, allowed: tuple[str, ...]) -> str:
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in allowed:
        return text
    what = " or ".join(allowed)
    if text in _NOT_SUPPORTED:
        raise Invalid(f"{what}; {text} ({_NOT_SUPPORTED[text]}) is not supported")
    raise Invalid(what)


def broker_type(value: object) -> str:
    return _kind(value, BROKER_TYPES)


def backend_protocol(value: object) -> str:
    return _kind(value, BACKEND_PROTOCOLS)


def resolve(worker: WorkerSettings) -> WorkerSettings:
    """``worker`` with the broker and result backend model-engine's settings name, if any.

    Raises ``ConfigError`` naming the keys when those settings are incomplete or contradict the
    forwarder's own URLs.
    """
    if worker.broker_type is None:
        _check_unselected(worker)
        return worker
    if worker.broker_url:
        raise ConfigError(
            "--broker-type",
            worker.broker_type,
            f"either --broker-type or {_NAMES['broker_url']}, not both",
        )
    if worker.broker_type == "sqs" and not worker.sqs_url:
        raise ConfigError("--sqs-url", None, "the SQS queue's URL, with --broker-type sqs")
    if worker.broker_type == "redis" and worker.sqs_url:
        raise ConfigError("--sqs-url", worker.sqs_url, "no SQS URL with --broker-type redis")
    broker = None
    if worker.broker_type == "redis":
        broker = _redis_url(worker, REDIS_DB_BY_VISIBILITY[worker.task_visibility], "--broker-type")
    return dataclasses.replace(worker, broker_url=broker, result_backend=_result_backend(worker))


def _check_unselected(worker: WorkerSettings) -> None:
    if worker.backend_protocol is not None:
        raise ConfigError(
            "--backend-protocol", worker.backend_protocol, "used only with --broker-type redis|sqs"
        )
    if worker.broker_url or worker.sqs_url:
        return
    names = ("redis_host", "redis_port", "redis_auth_token", "s3_bucket")
    given = [_NAMES[name] for name in names if getattr(worker, name) is not None]
    if given:
        raise ConfigError(
            "--broker-type",
            None,
            f"redis or sqs, or a --broker-url: {' and '.join(given)} set, so the embedded "
            "broker (a local folder) is not picked",
        )


def _result_backend(worker: WorkerSettings) -> str | None:
    if worker.backend_protocol is None and worker.result_backend:
        return worker.result_backend
    if worker.result_backend:
        raise ConfigError(
            "--backend-protocol",
            worker.backend_protocol,
            f"either --backend-protocol or {_NAMES['result_backend']}, not both",
        )
    if (worker.backend_protocol or "s3") == "redis":
        return _redis_url(worker, REDIS_RESULTS_DB, "--backend-protocol")
    if not worker.s3_bucket:
        raise ConfigError(
            "S3_BUCKET", None, "a bucket name, with --backend-protocol s3 (the default)"
        )
    return f"s3://{worker.s3_bucket}/{worker.s3_prefix}"


def _redis_url(worker: WorkerSettings, db: int, flag: str) -> str:
    missing = [env for name, env in _REDIS_KEYS.items() if getattr(worker, name) is None]
    if missing:
        raise ConfigError(
            " and ".join(missing),
            None,
            f"set, with {flag} redis (model-engine's celery_app reads REDIS_HOST and REDIS_PORT)",
        )
    if worker.redis_auth_token:
        token = quote(worker.redis_auth_token, safe="")
        return f"rediss://:{token}@{worker.redis_host}:{worker.redis_port}/{db}?ssl_cert_reqs=none"
    return f"redis://{worker.redis_host}:{worker.redis_port}/{db}"
