"""One frozen, validated ``Settings`` built once at the entrypoint.

Sources, each winning over the one before: defaults, the YAML file (model-engine's layout, with
``--set a.b.c=value`` overrides applied to it), the environment, command-line flags. A value that is
not allowed raises ``ConfigError`` naming the key as the user wrote it (file key, variable or flag),
the value and what is allowed; nothing falls back silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from forwarder.config.gateway import (
    GATEWAY_FLAGS,
    GATEWAY_SECTION,
    GatewaySettings,
    parse_gateway_settings,
)
from forwarder.config.hooks import HOOK_SECTIONS, HookSettings, parse_hook_settings
from forwarder.config.parsers import (
    Invalid,
    boolean,
    broker_url,
    choice,
    hostname,
    http_url,
    non_negative_int,
    non_negative_number,
    nonempty,
    optional,
    port,
    positive_int,
    positive_number,
    result_backend_url,
    route,
)
from forwarder.errors import ConfigError
from forwarder.protocol import DEAD_LETTER_SUFFIX
from forwarder.worker import gevent_switch as pool_switch

__all__ = ["ModelServerSettings", "Settings", "WorkerSettings", "load_settings", "mask_url"]

TASK_VISIBILITY_SECONDS = {
    "VISIBILITY_1M": 60,
    "VISIBILITY_10M": 600,
    "VISIBILITY_1H": 3600,
    "VISIBILITY_24H": 86400,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
TRACING = ("off", "otel")


@dataclass(frozen=True)
class ModelServerSettings:
    """The ``forwarder.async`` section: where the model server is and how replies are shaped."""

    user_hostname: str = "localhost"
    user_port: int = 5005
    predict_route: str = "/predict"
    healthcheck_route: str = "/readyz"
    model_engine_unwrap: bool = True
    serialize_results_as_string: bool = True
    wrap_response: bool = True
    # Only meaningful for model-engine's synchronous HTTP forwarder; accepted so its files load.
    forward_http_status: bool = False
    forward_http_status_in_body: bool = True

    def url(self, route: str) -> str:
        return f"http://{self.user_hostname}:{self.user_port}{route}"

    @property
    def predict_url(self) -> str:
        return self.url(self.predict_route)

    @property
    def healthcheck_url(self) -> str:
        return self.url(self.healthcheck_route)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "inference-forwarder"


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker consumes: queue, pool, broker, result store and the model call's limits."""

    queue: str = "inference"
    concurrency: int = 4
    pool: str = "prefork"
    max_tasks_per_child: int | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    sqs_url: str | None = None
    data_dir: Path = field(default_factory=_default_data_dir)
    task_visibility: str = "VISIBILITY_24H"
    model_timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 5.0
    model_retries: int = 20
    retry_backoff_max_seconds: float = 30.0
    readiness_timeout_seconds: float = 0.0
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_port: int | None = None  # None: no metrics endpoint
    metrics_host: str = "0.0.0.0"
    tracing: str = "off"
    max_deliveries: int = 5
    dead_letter_queue: str | None = None  # None: the queue's name + DEAD_LETTER_SUFFIX

    @property
    def visibility_timeout(self) -> int:
        return TASK_VISIBILITY_SECONDS[self.task_visibility]

    @property
    def dead_letter_queue_name(self) -> str:
        if self.dead_letter_queue:
            return self.dead_letter_queue
        # An SQS FIFO queue's name must end in .fifo.
        fifo = ".fifo" if self.queue.endswith(".fifo") else ""
        base = self.queue.removesuffix(fifo)
        return f"{base}{DEAD_LETTER_SUFFIX}{fifo}"


@dataclass(frozen=True)
class Settings:
    """Everything the worker, client and CLI need, validated."""

    model: ModelServerSettings = field(default_factory=ModelServerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    hooks: HookSettings = field(default_factory=HookSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    firehose_max_pool_connections: int = 10


def _folder(value: object) -> Path:
    return Path(nonempty(os.fspath(value) if isinstance(value, os.PathLike) else value))


@dataclass(frozen=True)
class _Field:
    section: str  # attribute of Settings holding the value, "" for Settings itself
    name: str
    file_key: str
    parse: Callable[[object], object]
    env: str | None = None
    flag: str | None = None


def _model(name: str, parse: Callable[[object], object], env: str | None = None) -> _Field:
    return _Field("model", name, f"forwarder.async.{name}", parse, env)


def _worker(
    name: str, parse: Callable[[object], object], env: str | None = None, flag: str | None = None
) -> _Field:
    return _Field("worker", name, f"worker.{name}", parse, env, flag)


_FIELDS = (
    _model("user_hostname", hostname),
    _model("user_port", port),
    _model("predict_route", route),
    _model("healthcheck_route", route),
    _model("model_engine_unwrap", boolean),
    _model("serialize_results_as_string", boolean, env="SERIALIZE_RESULTS_AS_STRING"),
    _model("wrap_response", boolean),
    _model("forward_http_status", boolean),
    _model("forward_http_status_in_body", boolean),
    _worker("queue", nonempty, env="FORWARDER_QUEUE", flag="--queue"),
    _worker("concurrency", positive_int, flag="--concurrency"),
    _worker("pool", choice(*pool_switch.POOLS), env=pool_switch.POOL_ENV, flag="--pool"),
    _worker("max_tasks_per_child", optional(positive_int), env=pool_switch.MAX_TASKS_ENV),
    _worker("broker_url", optional(broker_url), env="FORWARDER_BROKER_URL", flag="--broker-url"),
    _worker(
        "result_backend",
        optional(result_backend_url),
        env="FORWARDER_RESULT_BACKEND",
        flag="--result-backend",
    ),
    _worker("sqs_url", optional(http_url), flag="--sqs-url"),
    _worker("data_dir", _folder, env="FORWARDER_DATA_DIR", flag="--data-dir"),
    _worker("task_visibility", choice(*TASK_VISIBILITY_SECONDS), flag="--task-visibility"),
    _worker("model_timeout_seconds", positive_number),
    _worker("connect_timeout_seconds", positive_number),
    _worker("model_retries", non_negative_int),
    _worker("retry_backoff_max_seconds", positive_number),
    _worker("readiness_timeout_seconds", non_negative_number),
    _worker("log_level", choice(*LOG_LEVELS), env="FORWARDER_LOG_LEVEL", flag="--log-level"),
    _worker("log_format", choice(*LOG_FORMATS), env="FORWARDER_LOG_FORMAT", flag="--log-format"),
    _worker("metrics_port", optional(port), env="FORWARDER_METRICS_PORT", flag="--metrics-port"),
    _worker("metrics_host", hostname, env="FORWARDER_METRICS_HOST", flag="--metrics-host"),
    _worker("tracing", choice(*TRACING), env="FORWARDER_TRACING", flag="--tracing"),
    _worker(
        "max_deliveries",
        positive_int,
        env="FORWARDER_MAX_DELIVERIES",
        flag="--max-deliveries",
    ),
    _worker(
        "dead_letter_queue",
        optional(nonempty),
        env="FORWARDER_DEAD_LETTER_QUEUE",
        flag="--dead-letter-queue",
    ),
    _Field(
        "",
        "firehose_max_pool_connections",
        "firehose_max_pool_connections",
        positive_int,
        env="FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS",
    ),
)

# Keys model-engine's forwarder files carry; accepted in any of its sections.
_MODEL_ENGINE_KEYS = {f.name for f in fields(ModelServerSettings)} | {
    "use_grpc",
    "batch_route",
    "extra_routes",
}
_TOP_LEVEL_KEYS = (
    "forwarder",
    "worker",
    "firehose_max_pool_connections",
    *HOOK_SECTIONS,
    GATEWAY_SECTION,
)
_FORWARDER_KEYS = ("sync", "async", "stream", "max_concurrency")


def load_settings(
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """Build the one Settings from file + ``--set`` overrides, environment and flags."""
    env = os.environ if env is None else env
    flags = flags or {}
    document = _read_file(config_file) if config_file else {}
    for override in overrides:
        _apply_override(document, override)
    file_values = _check_document(document)

    values: dict[str, dict[str, Any]] = {"": {}, "model": {}, "worker": {}}
    for spec in _FIELDS:
        key, raw = _pick(spec, file_values, env, flags)
        if key is not None:
            values[spec.section][spec.name] = _parse(spec, key, raw)
    unknown_flags = set(flags) - {s.flag for s in _FIELDS if s.flag} - set(GATEWAY_FLAGS)
    if unknown_flags:
        unknown = sorted(unknown_flags)[0]
        raise ConfigError(unknown, flags[unknown], "not a settings flag")
    return Settings(
        model=ModelServerSettings(**values["model"]),
        worker=WorkerSettings(**values["worker"]),
        hooks=parse_hook_settings(document),
        gateway=parse_gateway_settings(document, env, flags),
        **values[""],
    )


def _pick(
    spec: _Field,
    file_values: Mapping[str, object],
    env: Mapping[str, str],
    flags: Mapping[str, object],
) -> tuple[str | None, object]:
    if spec.flag and flags.get(spec.flag) is not None:
        return spec.flag, flags[spec.flag]
    if spec.env and env.get(spec.env, "").strip():
        return spec.env, env[spec.env].strip()
    if spec.file_key in file_values:
        return spec.file_key, file_values[spec.file_key]
    return None, None


def _parse(spec: _Field, key: str, raw: object) -> object:
    try:
        return spec.parse(raw)
    except Invalid as exc:
        raise ConfigError(key, raw, str(exc)) from None


def _read_file(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", str(path), f"a readable file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("--config", str(path), "a UTF-8 text file of YAML or JSON") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError("--config", str(path), f"valid YAML or JSON ({problem})") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("--config", str(path), "a mapping at the top level")
    return document


def _apply_override(document: dict[str, Any], override: str) -> None:
    key_path, sep, text = override.partition("=")
    if not sep or not key_path or "" in key_path.split("."):
        raise ConfigError(
            "--set", override, "KEY.PATH=VALUE, for example forwarder.async.user_port=5005"
        )
    target = document
    *parents, leaf = key_path.split(".")
    for name in parents:
        child = target.get(name)
        if child is None:  # absent, or an empty section (`forwarder:` with nothing under it)
            child = target[name] = {}
        if not isinstance(child, dict):
            raise ConfigError("--set", override, f"{name} is not a section")
        target = child
    # YAML scalars, so that `true`, `5005` and `[a, b]` mean what they mean in the file.
    try:
        target[leaf] = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError("--set", override, f"a YAML value after = ({problem})") from None


def _check_document(document: Mapping[str, Any]) -> dict[str, object]:
    """Reject unknown keys and flatten the known ones to their dotted file keys."""
    flat: dict[str, object] = {}
    _check_keys(document, "", _TOP_LEVEL_KEYS)
    if "firehose_max_pool_connections" in document:
        flat["firehose_max_pool_connections"] = document["firehose_max_pool_connections"]
    forwarder = _section(document, "", "forwarder", _FORWARDER_KEYS)
    for name in ("sync", "stream", "async"):
        section = _section(forwarder, "forwarder.", name, sorted(_MODEL_ENGINE_KEYS))
        if name == "async":
            _check_unsupported(section)
            flat.update({f"forwarder.async.{k}": v for k, v in section.items()})
    worker_keys = sorted(s.name for s in _FIELDS if s.section == "worker")
    flat.update(
        {f"worker.{k}": v for k, v in _section(document, "", "worker", worker_keys).items()}
    )
    return flat


def _section(
    holder: Mapping[str, Any], prefix: str, name: str, allowed: Sequence[str]
) -> dict[str, Any]:
    value = holder.get(name)
    if value is None:  # absent, or present with nothing under it
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{name}", value, "a mapping of settings")
    _check_keys(value, f"{prefix}{name}.", allowed)
    return value


def _check_keys(mapping: Mapping[str, Any], prefix: str, allowed: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}", mapping[key], f"unknown key; allowed: {', '.join(allowed)}"
            )


def _check_unsupported(section: Mapping[str, Any]) -> None:
    use_grpc = section.get("use_grpc")
    if use_grpc is not None:
        try:
            grpc = boolean(use_grpc)
        except Invalid:
            grpc = True
        if grpc:
            raise ConfigError("forwarder.async.use_grpc", use_grpc, "false (HTTP only)")
    if section.get("batch_route") is not None:
        raise ConfigError(
            "forwarder.async.batch_route", section["batch_route"], "null (no batch route)"
        )


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``, for logs and check-config."""
    if not url or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme: the credentials start the string
        scheme, rest = "", url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}"
