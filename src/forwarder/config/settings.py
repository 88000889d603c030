"""One frozen, validated ``Settings`` built once at the entrypoint.

Sources, each winning over the one before: defaults, the YAML file (model-engine's layout, with
``--set a.b.c=value`` overrides applied to it), the environment, command-line flags. Which keys,
variables and flags there are, and how each is parsed, is the table in ``forwarder.config.schema``.
A value that is not allowed raises ``ConfigError`` naming the key as the user wrote it (file key,
variable or flag), the value and what is allowed; nothing falls back silently.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forwarder.config import schema
from forwarder.config.gateway import GatewaySettings
from forwarder.config.hooks import (
    CallbackSettings,
    EndpointInfo,
    HookSettings,
    LoggingSettings,
    check_hook_settings,
)
from forwarder.config.parsers import TASK_VISIBILITY_SECONDS, Invalid, boolean
from forwarder.config.schema import environment_variables
from forwarder.errors import ConfigError
from forwarder.protocol import DEAD_LETTER_SUFFIX

__all__ = [
    "AwsSettings",
    "ClientSettings",
    "ModelServerSettings",
    "Settings",
    "WorkerSettings",
    "environment_variables",
    "load_settings",
]


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
    # The CA bundle the model call trusts; None: certifi's.
    ca_bundle: str | None = None

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
    # model-engine's names for the broker and results, turned into the two URLs by
    # forwarder.config.model_engine.resolve where the broker is chosen.
    broker_type: str | None = None
    backend_protocol: str | None = None
    redis_host: str | None = None
    redis_port: int | None = None
    redis_auth_token: str | None = field(default=None, repr=False)
    s3_bucket: str | None = None
    s3_prefix: str = "tmp/celery/"
    data_dir: Path = field(default_factory=_default_data_dir)
    task_visibility: str = "VISIBILITY_24H"
    events: bool = False  # Celery's task events (worker -E)
    hostname: str | None = None  # None: Celery's celery@HOST
    model_timeout_seconds: float = 600.0
    # A reply past this fails its task; a streamed reply counts every byte read.
    max_response_bytes: int = 16 * 1024 * 1024
    # A Redis event log keeps about the last this many events of a task.
    events_max_length: int = 10_000
    connect_timeout_seconds: float = 5.0
    model_retries: int = 20
    retry_backoff_max_seconds: float = 30.0
    readiness_timeout_seconds: float = 0.0
    log_level: str = "INFO"
    log_format: str = "json"
    # botocore and urllib3 log whole requests and replies (credentials too) at DEBUG.
    library_log_level: str = "INFO"
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
class AwsSettings:
    """What every AWS client the settings build shares; credentials stay with boto3's chain."""

    region: str | None = None  # None: boto3's own (its config file)


@dataclass(frozen=True)
class ClientSettings:
    """Where ``forwarder submit | get | cancel`` find a gateway; None: they use the broker."""

    gateway_url: str | None = None
    gateway_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything the worker, client and CLI need, validated."""

    model: ModelServerSettings = field(default_factory=ModelServerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    hooks: HookSettings = field(default_factory=HookSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    firehose_max_pool_connections: int = 10
    aws: AwsSettings = field(default_factory=AwsSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    # The key each value given was read from (a flag, a variable or a file key), by field path.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


# The dataclass at each field path of the schema, every one before the one holding it.
_CLASSES: dict[str, type] = {
    "model": ModelServerSettings,
    "worker": WorkerSettings,
    "hooks.endpoint": EndpointInfo,
    "hooks.callback": CallbackSettings,
    "hooks.logging": LoggingSettings,
    "hooks": HookSettings,
    "gateway": GatewaySettings,
    "aws": AwsSettings,
    "client": ClientSettings,
}
# Keys of model-engine's forwarder sections; all accepted in each of them.
_MODEL_ENGINE_KEYS = (
    "user_hostname",
    "user_port",
    "predict_route",
    "healthcheck_route",
    "model_engine_unwrap",
    "serialize_results_as_string",
    "wrap_response",
    "forward_http_status",
    "forward_http_status_in_body",
    "use_grpc",
    "batch_route",
    "extra_routes",
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
    document = _read_file(config_file) if config_file else {}
    for override in overrides:
        _apply_override(document, override)
    values, sources = schema.read(_file_values(document), env, flags or {})
    settings = _build(values, sources)
    check_hook_settings(settings.hooks)
    return settings


def _build(values: Mapping[str, Any], sources: Mapping[str, str]) -> Settings:
    """The dataclasses filled from the values by field path, innermost first."""
    arguments: defaultdict[str, dict[str, Any]] = defaultdict(dict)
    for path, value in values.items():
        holder, _, name = path.rpartition(".")
        arguments[holder][name] = value
    for path, cls in _CLASSES.items():
        holder, _, name = path.rpartition(".")
        arguments[holder][name] = cls(**arguments[path])
    return Settings(**arguments[""], sources=dict(sources))


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


def _file_values(document: Mapping[str, Any]) -> dict[str, object]:
    """Reject unknown keys and flatten the known ones to their dotted file keys."""
    sections = schema.file_sections()
    top_level = sections.pop("")
    _check_keys(document, "", schema.top_level_keys())
    flat: dict[str, object] = {key: document[key] for key in top_level if key in document}
    forwarder = _section(document, "", "forwarder", _FORWARDER_KEYS)
    for name in ("sync", "stream"):
        _section(forwarder, "forwarder.", name, sorted(_MODEL_ENGINE_KEYS))
    for key, names in sections.items():
        if key == "forwarder.async":
            allowed = sorted({*_MODEL_ENGINE_KEYS, *names})
            section = _section(forwarder, "forwarder.", "async", allowed)
            _check_unsupported(section)
        else:
            section = _section(document, "", key, names)
        flat.update({f"{key}.{name}": value for name, value in section.items() if name in names})
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
