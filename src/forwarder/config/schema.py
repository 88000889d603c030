"""The settings schema: one table of every setting, and everything derived from it.

Each entry names its file key (as the YAML file and ``--set`` write it), the environment
variables that give it (the first one set wins), its command-line flag with the flag's help and
the command families that take it, its parser, whether it is a secret, and the field of
``Settings`` it fills. From the table come the values read from the file, the environment and
the flags (``read``), the command line's flags (``flags_for``), check-config's masked document
(``masked_document``), the keys each file section allows (``file_sections``) and the variables
the settings read (``environment_variables``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forwarder.config import model_engine as me
from forwarder.config import parsers as p
from forwarder.config.gateway import ROUTE_ACCESS
from forwarder.config.hooks import (
    BODY_MODES,
    DELIVERY_MODES,
    SINK_NAMES,
    allowed_hosts,
    hook_names,
    parse_default_auth,
    parse_signing_secrets,
    shown_auth,
    shown_secrets,
)
from forwarder.config.masking import MASK, mask_url
from forwarder.config.setting import COMMAND_FAMILIES, NOT_SHOWN, Section, Setting
from forwarder.errors import ConfigError
from forwarder.worker import gevent_switch as pool_switch

if TYPE_CHECKING:
    from forwarder.config.settings import Settings

__all__ = [
    "AWS",
    "CALLBACK",
    "CLIENT",
    "COMMAND_FAMILIES",
    "ENDPOINT",
    "GATEWAY",
    "HOOKS",
    "LOGGING",
    "MODEL",
    "NOT_SHOWN",
    "SETTINGS",
    "TOP",
    "WORKER",
    "Section",
    "Setting",
    "environment_variables",
    "file_sections",
    "flags_for",
    "masked_document",
    "read",
    "top_level_keys",
]

_EVERY = COMMAND_FAMILIES
_WORKER = ("worker",)

MODEL = Section("forwarder.async", "model")
WORKER = Section("worker", "worker")
TOP = Section("", "")
HOOKS = Section("", "hooks", null_is_unset=True)
ENDPOINT = Section("endpoint", "hooks.endpoint", null_is_unset=True)
CALLBACK = Section("callback", "hooks.callback", null_is_unset=True)
LOGGING = Section("logging", "hooks.logging", null_is_unset=True)
GATEWAY = Section("gateway", "gateway", null_is_unset=True)
AWS = Section("aws", "aws", null_is_unset=True)
CLIENT = Section("client", "client", null_is_unset=True)

SETTINGS: tuple[Setting, ...] = (
    Setting(MODEL, "user_hostname", p.hostname),
    Setting(MODEL, "user_port", p.port),
    Setting(MODEL, "predict_route", p.route),
    Setting(MODEL, "healthcheck_route", p.route),
    Setting(MODEL, "model_engine_unwrap", p.boolean),
    Setting(MODEL, "serialize_results_as_string", p.boolean,
        env=("SERIALIZE_RESULTS_AS_STRING",)),
    Setting(MODEL, "wrap_response", p.boolean),
    Setting(MODEL, "forward_http_status", p.boolean),
    Setting(MODEL, "forward_http_status_in_body", p.boolean),
    # The variables requests and curl read, so that the model call trusts what they trust.
    Setting(MODEL, "ca_bundle", p.optional(p.nonempty),
        env=("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")),
    Setting(WORKER, "queue", p.nonempty, env=("FORWARDER_QUEUE",),
        flag="--queue", help="queue name", commands=_EVERY),
    Setting(WORKER, "concurrency", p.positive_int,
        flag="--concurrency", aliases=("--num-workers",),
        help="task slots: processes (prefork) or greenlets (gevent)", commands=_WORKER),
    Setting(WORKER, "pool", p.choice(*pool_switch.POOLS), env=(pool_switch.POOL_ENV,),
        flag="--pool", help="prefork (default) or gevent", commands=_WORKER),
    Setting(WORKER, "max_tasks_per_child", p.optional(p.positive_int),
        env=(pool_switch.MAX_TASKS_ENV,)),
    Setting(WORKER, "broker_url", p.optional(p.broker_url), env=("FORWARDER_BROKER_URL",),
        flag="--broker-url", help="redis://... (default: embedded, no server)",
        commands=_EVERY, show=mask_url),
    Setting(WORKER, "result_backend", p.optional(p.result_backend_url),
        env=("FORWARDER_RESULT_BACKEND",), flag="--result-backend",
        help="redis://..., file://... or s3://BUCKET[/PREFIX][?checksum=sha256] for results",
        commands=_EVERY, show=mask_url),
    Setting(WORKER, "sqs_url", p.optional(p.http_url),
        flag="--sqs-url", help="SQS queue URL (SQS broker; needs --result-backend)",
        commands=_EVERY, show=mask_url),
    Setting(WORKER, "broker_type", p.optional(me.broker_type), flag="--broker-type",
        help="redis or sqs: model-engine's broker, from REDIS_HOST/REDIS_PORT or --sqs-url",
        commands=_EVERY),
    Setting(WORKER, "backend_protocol", p.optional(me.backend_protocol),
        flag="--backend-protocol",
        help="s3 (default with --broker-type: S3_BUCKET) or redis: model-engine's results",
        commands=_EVERY),
    # The variables model-engine's celery_app reads, for --broker-type and --backend-protocol.
    Setting(WORKER, "redis_host", p.optional(p.hostname), env=("REDIS_HOST",)),
    Setting(WORKER, "redis_port", p.optional(p.port), env=("REDIS_PORT",)),
    Setting(WORKER, "redis_auth_token", p.optional(p.nonempty), env=("REDIS_AUTH_TOKEN",),
        secret=True),
    Setting(WORKER, "s3_bucket", p.optional(p.bucket), env=("S3_BUCKET",)),
    Setting(WORKER, "s3_prefix", p.s3_prefix),
    Setting(WORKER, "data_dir", p.folder, env=("FORWARDER_DATA_DIR",),
        flag="--data-dir", help="folder of the embedded broker and results", commands=_EVERY),
    Setting(WORKER, "task_visibility", p.choice(*p.TASK_VISIBILITY_SECONDS),
        flag="--task-visibility",
        help="VISIBILITY_1M, VISIBILITY_10M, VISIBILITY_1H or VISIBILITY_24H", commands=_WORKER),
    Setting(WORKER, "events", p.boolean, env=("FORWARDER_EVENTS",), flag="--events",
        help="send Celery's task events, for Flower and celery events (off by default)",
        commands=_WORKER, metavar="true|false"),
    Setting(WORKER, "hostname", p.optional(p.node_name), env=("FORWARDER_HOSTNAME",),
        flag="--hostname", aliases=("-n",),
        help="the worker's node name, as Celery's -n (default celery@HOST; %%h: the host)",
        commands=_WORKER),
    Setting(WORKER, "model_timeout_seconds", p.positive_number),
    Setting(WORKER, "connect_timeout_seconds", p.positive_number),
    Setting(WORKER, "max_response_bytes", p.positive_int,
        env=("FORWARDER_MAX_RESPONSE_BYTES",)),
    Setting(WORKER, "events_max_length", p.positive_int),
    Setting(WORKER, "model_retries", p.non_negative_int),
    Setting(WORKER, "retry_backoff_max_seconds", p.positive_number),
    Setting(WORKER, "readiness_timeout_seconds", p.non_negative_number),
    Setting(WORKER, "log_level", p.choice(*p.LOG_LEVELS), env=("FORWARDER_LOG_LEVEL",),
        flag="--log-level", help="DEBUG, INFO, WARNING or ERROR", commands=_EVERY),
    Setting(WORKER, "log_format", p.choice(*p.LOG_FORMATS), env=("FORWARDER_LOG_FORMAT",),
        flag="--log-format", help="json (default) or text", commands=_EVERY),
    Setting(WORKER, "library_log_level", p.choice(*p.LOG_LEVELS),
        env=("FORWARDER_LIBRARY_LOG_LEVEL",), flag="--library-log-level",
        help="lowest level of botocore's and urllib3's lines (INFO)", commands=_EVERY),
    Setting(WORKER, "metrics_port", p.optional(p.port), env=("FORWARDER_METRICS_PORT",),
        flag="--metrics-port", help="serve Prometheus metrics on this port", commands=_WORKER),
    Setting(WORKER, "metrics_host", p.hostname, env=("FORWARDER_METRICS_HOST",),
        flag="--metrics-host", help="address of the metrics endpoint (0.0.0.0)",
        commands=_WORKER),
    Setting(WORKER, "tracing", p.choice(*p.TRACING), env=("FORWARDER_TRACING",),
        flag="--tracing", help="off (default) or otel: model calls as spans", commands=_WORKER),
    Setting(WORKER, "max_deliveries", p.positive_int, env=("FORWARDER_MAX_DELIVERIES",),
        flag="--max-deliveries",
        help="deliveries that did not finish before a task is dead-lettered (5)",
        commands=_WORKER),
    Setting(WORKER, "dead_letter_queue", p.optional(p.nonempty),
        env=("FORWARDER_DEAD_LETTER_QUEUE",), flag="--dead-letter-queue",
        help="where crash-looping tasks go (default: QUEUE-dead-letter)",
        commands=("worker", "dead-letter")),
    Setting(TOP, "firehose_max_pool_connections", p.positive_int,
        env=("FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS",)),
    Setting(HOOKS, "hooks", hook_names, field="names"),
    Setting(ENDPOINT, "id", p.text),
    Setting(ENDPOINT, "name", p.text),
    Setting(ENDPOINT, "type", p.text),
    Setting(ENDPOINT, "bundle_id", p.text),
    Setting(ENDPOINT, "labels", p.labels),
    Setting(CALLBACK, "default_url", p.http_url, show=mask_url),
    Setting(CALLBACK, "default_auth", parse_default_auth, secret=True, show=shown_auth),
    Setting(CALLBACK, "allowed_hosts", allowed_hosts),
    Setting(CALLBACK, "allow_private_networks", p.boolean),
    Setting(CALLBACK, "timeout_seconds", p.positive_number),
    Setting(CALLBACK, "deadline_seconds", p.positive_number),
    Setting(CALLBACK, "max_attempts", p.positive_int),
    Setting(CALLBACK, "backoff_seconds", p.positive_number),
    Setting(CALLBACK, "backoff_max_seconds", p.positive_number),
    Setting(CALLBACK, "signing_secret", parse_signing_secrets, secret=True,
        show=shown_secrets),
    Setting(CALLBACK, "delivery", p.choice(*DELIVERY_MODES)),
    Setting(CALLBACK, "delivery_slots", p.non_negative_int),
    Setting(CALLBACK, "retry_window_seconds", p.positive_number),
    Setting(CALLBACK, "delivery_backoff_seconds", p.positive_number),
    Setting(CALLBACK, "delivery_backoff_max_seconds", p.positive_number),
    Setting(CALLBACK, "delivery_visibility_seconds", p.optional(p.positive_number)),
    Setting(CALLBACK, "body", p.choice(*BODY_MODES)),
    Setting(CALLBACK, "result_url", p.optional(p.http_url)),
    Setting(LOGGING, "sink", p.choice(*SINK_NAMES)),
    Setting(LOGGING, "path", p.expanded_path),
    Setting(LOGGING, "stream_name", p.text),
    Setting(LOGGING, "role_arn", p.text),
    Setting(LOGGING, "region", p.text),
    Setting(LOGGING, "role_session_name", p.text),
    Setting(LOGGING, "session_duration_seconds", p.positive_int),
    Setting(LOGGING, "refresh_leeway_seconds", p.positive_number),
    Setting(LOGGING, "flush_interval_seconds", p.positive_number),
    Setting(GATEWAY, "host", p.hostname, env=("FORWARDER_GATEWAY_HOST",),
        flag="--host", help="address to listen on (default 127.0.0.1)", commands=("gateway",)),
    Setting(GATEWAY, "port", p.listen_port, env=("FORWARDER_GATEWAY_PORT",),
        flag="--port", help="port to listen on (default 8000; 0 picks a free one)",
        commands=("gateway",)),
    Setting(GATEWAY, "max_body_bytes", p.positive_int),
    Setting(GATEWAY, "auth_tokens", p.tokens, env=("FORWARDER_GATEWAY_TOKENS",), secret=True),
    Setting(GATEWAY, "default_ttl_seconds", p.seconds_or_no_limit),
    Setting(GATEWAY, "default_timeout_seconds", p.seconds_or_no_limit),
    Setting(GATEWAY, "idempotency_retention_seconds", p.positive_number),
    Setting(GATEWAY, "idempotency_lease_seconds", p.positive_number),
    Setting(GATEWAY, "allow_anonymous", p.boolean, env=("FORWARDER_GATEWAY_ALLOW_ANONYMOUS",),
        flag="--allow-anonymous", help="serve without tokens on an address other than loopback",
        commands=("gateway",)),
    Setting(GATEWAY, "trusted_hosts", p.host_patterns, env=("FORWARDER_GATEWAY_TRUSTED_HOSTS",)),
    Setting(GATEWAY, "max_connections", p.positive_int),
    Setting(GATEWAY, "header_timeout_seconds", p.positive_number),
    Setting(GATEWAY, "body_timeout_seconds", p.positive_number),
    Setting(GATEWAY, "expose_tracebacks", p.boolean),
    Setting(GATEWAY, "docs_access", p.choice(*ROUTE_ACCESS)),
    Setting(GATEWAY, "metrics_access", p.choice(*ROUTE_ACCESS)),
    Setting(GATEWAY, "metrics_port", p.optional(p.port), env=("FORWARDER_GATEWAY_METRICS_PORT",)),
    Setting(GATEWAY, "metrics_host", p.hostname, env=("FORWARDER_GATEWAY_METRICS_HOST",)),
    # The region of the AWS clients the settings build; boto3's own variable first.
    Setting(AWS, "region", p.nonempty, env=("AWS_DEFAULT_REGION", "AWS_REGION")),
    Setting(CLIENT, "gateway_url", p.gateway_url, env=("FORWARDER_GATEWAY_URL",),
        flag="--gateway-url", metavar="URL", help="talk to this gateway instead of the broker",
        commands=("tasks",), show=mask_url),
    Setting(CLIENT, "gateway_token", p.nonempty, env=("FORWARDER_GATEWAY_TOKEN",),
        flag="--token", help="the gateway's bearer token", commands=("tasks",), secret=True),
)  # fmt: skip


def environment_variables() -> tuple[str, ...]:
    """Every environment variable the settings read, in the table's order."""
    return tuple(name for setting in SETTINGS for name in setting.env)


def flags_for(command: str) -> tuple[Setting, ...]:
    """The settings a command family takes as flags."""
    return tuple(s for s in SETTINGS if s.flag and command in s.commands)


def file_sections() -> dict[str, list[str]]:
    """Each file section's key and the names it allows, in the table's order."""
    sections: dict[str, list[str]] = {}
    for setting in SETTINGS:
        sections.setdefault(setting.section.key, []).append(setting.name)
    return sections


def top_level_keys() -> list[str]:
    """The keys a file may have at its top level, in the table's order."""
    return list(dict.fromkeys(setting.file_key.split(".")[0] for setting in SETTINGS))


def read(
    file_values: Mapping[str, object], env: Mapping[str, str], flags: Mapping[str, object]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed values by field path, and the key each was read from.

    ``file_values`` holds the file's values by file key. For each setting the flag wins over the
    environment, the environment over the file; an empty variable is not set.
    """
    unknown = sorted(set(flags) - {s.flag for s in SETTINGS if s.flag})
    if unknown:
        raise ConfigError(unknown[0], flags[unknown[0]], "not a settings flag")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        picked = _pick(setting, file_values, env, flags)
        if picked is not None:
            key, raw = picked
            try:
                values[setting.fills] = setting.parse(raw)
            except p.Invalid as exc:
                raise ConfigError(key, NOT_SHOWN if setting.secret else raw, str(exc)) from None
            sources[setting.fills] = key
    return values, sources


def _pick(
    setting: Setting,
    file_values: Mapping[str, object],
    env: Mapping[str, str],
    flags: Mapping[str, object],
) -> tuple[str, object] | None:
    if setting.flag and flags.get(setting.flag) is not None:
        return setting.flag, flags[setting.flag]
    for name in setting.env:
        if env.get(name, "").strip():
            return name, env[name].strip()
    if setting.file_key in file_values:
        raw = file_values[setting.file_key]
        if raw is not None or not setting.section.null_is_unset:
            return setting.file_key, raw
    return None


def masked_document(settings: Settings) -> dict[str, Any]:
    """The settings as a config file would hold them, every secret shown as ``***``."""
    document: dict[str, Any] = {}
    for setting in SETTINGS:
        value: Any = settings
        for name in setting.fills.split("."):
            value = getattr(value, name)
        *parents, leaf = setting.file_key.split(".")
        holder = document
        for name in parents:
            holder = holder.setdefault(name, {})
        holder[leaf] = _shown(setting, value)
    return document


def _shown(setting: Setting, value: Any) -> object:
    if setting.show is not None:
        return setting.show(value)
    if setting.secret and value is not None:
        return [MASK] * len(value) if isinstance(value, tuple) else MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value
