"""The post-inference hooks' part of the settings: which hooks run, and how each is configured.

These come from the config file's top-level ``hooks``, ``endpoint``, ``callback`` and ``logging``
keys (``--set`` overrides apply). Like every setting, a value that is not allowed raises
``ConfigError`` naming the key, the value and what is allowed. Secrets (passwords, private keys,
signing secrets) are kept out of every ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from forwarder.config.parsers import (
    Invalid,
    choice,
    http_url,
    nonempty,
    positive_int,
    positive_number,
)
from forwarder.errors import ConfigError

__all__ = [
    "HOOK_NAMES",
    "SINK_NAMES",
    "BasicAuth",
    "CallbackAuth",
    "CallbackSettings",
    "EndpointInfo",
    "HookSettings",
    "LoggingSettings",
    "MtlsAuth",
    "masked_document",
    "parse_callback_auth",
    "parse_hook_settings",
]

HOOK_NAMES = ("callback", "logging")
SINK_NAMES = ("file", "firehose")
HOOK_SECTIONS = ("hooks", "endpoint", "callback", "logging")


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class MtlsAuth:
    """A client certificate and its private key, both PEM contents (not file names)."""

    cert: str = field(repr=False)
    key: str = field(repr=False)


CallbackAuth = BasicAuth | MtlsAuth


@dataclass(frozen=True)
class EndpointInfo:
    """Who the records are about: model-engine's endpoint fields, copied into every log record."""

    id: str | None = None
    name: str | None = None
    type: str | None = None
    bundle_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallbackSettings:
    default_url: str | None = None
    default_auth: CallbackAuth | None = None
    timeout_seconds: float = 10.0
    # Attempts in all, counting the first; only connection errors, 429 and 5xx are tried again.
    max_attempts: int = 3
    backoff_seconds: float = 0.5
    backoff_max_seconds: float = 5.0
    # Standard Webhooks secret (``whsec_`` + base64, or any other text used as raw bytes).
    signing_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LoggingSettings:
    sink: str = "file"
    # File sink: JSON lines; None means ``<data_dir>/hook-records.jsonl``.
    path: Path | None = None
    # Firehose sink.
    stream_name: str | None = None
    role_arn: str | None = None
    region: str | None = None
    role_session_name: str = "inference-forwarder-logging"
    session_duration_seconds: int = 3600
    refresh_leeway_seconds: float = 600.0
    flush_interval_seconds: float = 1.0


@dataclass(frozen=True)
class HookSettings:
    names: tuple[str, ...] = ()
    endpoint: EndpointInfo = field(default_factory=EndpointInfo)
    callback: CallbackSettings = field(default_factory=CallbackSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


def _parse(key: str, raw: object, parse: Callable[[object], Any]) -> Any:
    try:
        return parse(raw)
    except Invalid as exc:
        raise ConfigError(key, raw, str(exc)) from None


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid("a string")
    return nonempty(str(value))


def _folder_path(value: object) -> Path:
    return Path(_text(value)).expanduser()


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise Invalid("a mapping of label names to strings")
    return {k: str(v) for k, v in value.items()}


def parse_callback_auth(value: object, key: str) -> CallbackAuth:
    """``{"kind": "basic", "username", "password"}`` or ``{"kind": "mtls", "cert", "key"}``.

    Raises ``ConfigError`` naming ``key`` (a config key, or a payload field) without ever echoing
    the secret values.
    """
    kinds = {"basic": ("username", "password"), "mtls": ("cert", "key")}
    if not isinstance(value, Mapping) or value.get("kind") not in kinds:
        kind = value.get("kind") if isinstance(value, Mapping) else type(value).__name__
        raise ConfigError(
            key, kind, 'an object with "kind": "basic" (username, password) or "mtls" (cert, key)'
        )
    kind = value["kind"]
    needed = kinds[kind]
    for name in value:
        if name != "kind" and name not in needed:
            raise ConfigError(
                f"{key}.{name}", "...", f"unknown key; allowed: kind, {', '.join(needed)}"
            )
    for name in needed:
        if not isinstance(value.get(name), str) or (name != "password" and not value[name]):
            shown = "missing" if name not in value else type(value[name]).__name__
            raise ConfigError(f"{key}.{name}", shown, "a non-empty string")
    if kind == "basic":
        return BasicAuth(username=value["username"], password=value["password"])
    for name in needed:
        if "-----BEGIN" not in value[name]:
            raise ConfigError(f"{key}.{name}", "(not shown)", "PEM contents (-----BEGIN ...)")
    if "ENCRYPTED" in value["key"]:
        # OpenSSL would ask for the passphrase on the terminal and hang the worker.
        raise ConfigError(f"{key}.key", "(encrypted)", "an unencrypted PEM private key")
    return MtlsAuth(cert=value["cert"], key=value["key"])


def _section(document: Mapping[str, Any], name: str, cls: type) -> dict[str, Any]:
    value = document.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(name, value, "a mapping of settings")
    allowed = [f.name for f in fields(cls)]
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{name}.{key}", value[key], f"unknown key; allowed: {', '.join(allowed)}"
            )
    return dict(value)


def _hook_names(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Sequence):
        raise ConfigError("hooks", value, f"a list of hook names from: {', '.join(HOOK_NAMES)}")
    names: list[str] = []
    for item in value:
        name = _parse("hooks", item, choice(*HOOK_NAMES))
        if name not in names:
            names.append(name)
    return tuple(names)


_ENDPOINT_PARSERS: dict[str, Callable[[object], Any]] = {
    "id": _text,
    "name": _text,
    "type": _text,
    "bundle_id": _text,
    "labels": _labels,
}
_CALLBACK_PARSERS: dict[str, Callable[[object], Any]] = {
    "default_url": http_url,
    "timeout_seconds": positive_number,
    "max_attempts": positive_int,
    "backoff_seconds": positive_number,
    "backoff_max_seconds": positive_number,
    "signing_secret": _text,
}
_LOGGING_PARSERS: dict[str, Callable[[object], Any]] = {
    "sink": choice(*SINK_NAMES),
    "path": _folder_path,
    "stream_name": _text,
    "role_arn": _text,
    "region": _text,
    "role_session_name": _text,
    "session_duration_seconds": positive_int,
    "refresh_leeway_seconds": positive_number,
    "flush_interval_seconds": positive_number,
}


def _parsed(
    section: str, values: Mapping[str, Any], parsers: Mapping[str, Callable[[object], Any]]
) -> dict[str, Any]:
    return {
        key: _parse(f"{section}.{key}", raw, parsers[key])
        for key, raw in values.items()
        if key in parsers and raw is not None
    }


def parse_hook_settings(document: Mapping[str, Any]) -> HookSettings:
    """The hook settings from a config document's top-level hook sections."""
    names = _hook_names(document.get("hooks"))
    endpoint = EndpointInfo(
        **_parsed("endpoint", _section(document, "endpoint", EndpointInfo), _ENDPOINT_PARSERS)
    )
    raw_callback = _section(document, "callback", CallbackSettings)
    callback_values = _parsed("callback", raw_callback, _CALLBACK_PARSERS)
    if raw_callback.get("default_auth") is not None:
        callback_values["default_auth"] = parse_callback_auth(
            raw_callback["default_auth"], "callback.default_auth"
        )
    callback = CallbackSettings(**callback_values)
    logging = LoggingSettings(
        **_parsed("logging", _section(document, "logging", LoggingSettings), _LOGGING_PARSERS)
    )
    if "logging" in names and logging.sink == "firehose" and not logging.stream_name:
        raise ConfigError(
            "logging.stream_name", None, "the Firehose delivery stream's name (sink: firehose)"
        )
    if callback.backoff_max_seconds < callback.backoff_seconds:
        raise ConfigError(
            "callback.backoff_max_seconds",
            callback.backoff_max_seconds,
            f"at least callback.backoff_seconds ({callback.backoff_seconds:g})",
        )
    return HookSettings(names=names, endpoint=endpoint, callback=callback, logging=logging)


def masked_document(hooks: HookSettings) -> dict[str, Any]:
    """The hook settings as a config file would hold them, with every secret shown as ``***``."""
    callback = asdict(hooks.callback)
    auth = callback["default_auth"]
    if auth is not None:
        kind = "basic" if isinstance(hooks.callback.default_auth, BasicAuth) else "mtls"
        callback["default_auth"] = {
            "kind": kind,
            **{k: v if k == "username" else "***" for k, v in auth.items()},
        }
    if callback["signing_secret"] is not None:
        callback["signing_secret"] = "***"
    logging = asdict(hooks.logging)
    if logging["path"] is not None:
        logging["path"] = str(logging["path"])
    endpoint = asdict(hooks.endpoint)
    endpoint["labels"] = dict(hooks.endpoint.labels)
    return {
        "hooks": list(hooks.names),
        "endpoint": endpoint,
        "callback": callback,
        "logging": logging,
    }
