"""The post-inference hooks' part of the settings: which hooks run, and how each is configured.

These come from the config file's top-level ``hooks``, ``endpoint``, ``callback`` and ``logging``
keys (``--set`` overrides apply). Like every setting, a value that is not allowed raises
``ConfigError`` naming the key, the value and what is allowed. Secrets (passwords, private keys,
signing secrets) are kept out of every ``repr``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forwarder.config.masking import MASK
from forwarder.config.parsers import Invalid, choice
from forwarder.errors import ConfigError

__all__ = [
    "BODY_MODES",
    "DELIVERY_MODES",
    "HOOK_NAMES",
    "SINK_NAMES",
    "BasicAuth",
    "CallbackAuth",
    "CallbackSettings",
    "EndpointInfo",
    "HookSettings",
    "LoggingSettings",
    "MtlsAuth",
    "allowed_hosts",
    "check_hook_settings",
    "hook_names",
    "parse_callback_auth",
    "parse_default_auth",
    "parse_signing_secrets",
    "shown_auth",
    "shown_secrets",
]

HOOK_NAMES = ("callback", "logging")
SINK_NAMES = ("file", "firehose")
# inline: the hook's own bounded tries in the task's slot; queued: a delivery job, retried for hours.
DELIVERY_MODES = ("queued", "inline")
# full: the result itself; notify: task id, status and where to fetch the result.
BODY_MODES = ("full", "notify")


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
    # Names, "*.suffix" patterns and CIDRs; when set, the only hosts a request's callback_url may
    # name. A host listed here may also resolve to a private address.
    allowed_hosts: tuple[str, ...] = ()
    allow_private_networks: bool = False
    # The most one attempt may take (connection to last byte), and each socket read's timeout.
    timeout_seconds: float = 10.0
    # The most the whole delivery may take: every attempt and every wait between them.
    deadline_seconds: float = 60.0
    # Attempts in all, counting the first; only connection errors, 429 and 5xx are tried again.
    max_attempts: int = 3
    backoff_seconds: float = 0.5
    backoff_max_seconds: float = 5.0
    # Standard Webhooks secrets (``whsec_`` + base64, or any other text used as raw bytes): one,
    # or several during a rotation, each signing every call.
    signing_secret: str | tuple[str, ...] | None = field(default=None, repr=False)
    delivery: str = "queued"
    # Slots of the deliverer the worker starts beside itself; 0: none (run ``forwarder deliver``).
    delivery_slots: int = 4
    retry_window_seconds: float = 86400.0
    delivery_backoff_seconds: float = 10.0
    delivery_backoff_max_seconds: float = 900.0
    # How long a delivery job may stay unacknowledged; None: derived from the backoff cap.
    delivery_visibility_seconds: float | None = None
    body: str = "full"
    # Where a notify body says the result is: a URL with ``{task_id}`` in it.
    result_url: str | None = None

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        if self.signing_secret is None:
            return ()
        if isinstance(self.signing_secret, str):
            return (self.signing_secret,)
        return self.signing_secret

    @property
    def visibility_seconds(self) -> float:
        """Longer than any wait for a retry plus an attempt, so a waiting job is never resent."""
        if self.delivery_visibility_seconds is not None:
            return self.delivery_visibility_seconds
        return self.delivery_backoff_max_seconds + 2 * self.timeout_seconds + 60.0


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


def hook_names(value: object) -> tuple[str, ...]:
    """The ``hooks`` key: a list of hook names, or one comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Sequence):
        raise ConfigError("hooks", value, f"a list of hook names from: {', '.join(HOOK_NAMES)}")
    names: list[str] = []
    for item in value:
        try:
            name = choice(*HOOK_NAMES)(item)
        except Invalid as exc:
            raise ConfigError("hooks", item, str(exc)) from None
        if name not in names:
            names.append(name)
    return tuple(names)


_HOST_NAME = re.compile(
    r"(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.?"
)


def allowed_hosts(value: object) -> tuple[str, ...]:
    """``callback.allowed_hosts``: host names, ``*.suffix`` patterns and networks (CIDR)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise Invalid("a list of host names, *.suffix patterns or CIDRs (10.0.0.0/8)")
    for entry in value:
        if not isinstance(entry, str) or not _allowed_host(entry.strip()):
            raise Invalid(
                f"host names (receiver.example.com), *.suffix patterns (*.example.com) or "
                f"networks (10.0.0.0/8, fd00::/8); {entry!r} is none of them"
            )
    return tuple(dict.fromkeys(entry.strip().lower() for entry in value))


def _allowed_host(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(entry.lower())) and entry != "*."
    return True


def parse_signing_secrets(value: object) -> tuple[str, ...]:
    """``callback.signing_secret``: one secret, or a list of them (the newest first)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise Invalid("a secret, or a non-empty list of secrets")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise Invalid("a secret, or a non-empty list of secrets (non-empty strings)")
    return tuple(items)


def shown_secrets(secrets: tuple[str, ...] | None) -> str | list[str] | None:
    """One secret as one mask, a rotation's list as a list of them."""
    if secrets is None:
        return None
    return MASK if len(secrets) == 1 else [MASK] * len(secrets)


def parse_default_auth(value: object) -> CallbackAuth:
    return parse_callback_auth(value, "callback.default_auth")


def shown_auth(auth: CallbackAuth | None) -> dict[str, str] | None:
    """The credentials as a config file would hold them, every secret shown as ``***``."""
    if auth is None:
        return None
    if isinstance(auth, BasicAuth):
        return {"kind": "basic", "username": auth.username, "password": MASK}
    return {"kind": "mtls", "cert": MASK, "key": MASK}


def check_hook_settings(hooks: HookSettings) -> None:
    """What no single hook setting can check alone."""
    logging = hooks.logging
    if "logging" in hooks.names and logging.sink == "firehose" and not logging.stream_name:
        raise ConfigError(
            "logging.stream_name", None, "the Firehose delivery stream's name (sink: firehose)"
        )
    callback = hooks.callback
    if callback.backoff_max_seconds < callback.backoff_seconds:
        raise ConfigError(
            "callback.backoff_max_seconds",
            callback.backoff_max_seconds,
            f"at least callback.backoff_seconds ({callback.backoff_seconds:g})",
        )
    _check_delivery_settings(callback)


def _check_delivery_settings(callback: CallbackSettings) -> None:
    if callback.delivery_backoff_max_seconds < callback.delivery_backoff_seconds:
        raise ConfigError(
            "callback.delivery_backoff_max_seconds",
            callback.delivery_backoff_max_seconds,
            f"at least callback.delivery_backoff_seconds ({callback.delivery_backoff_seconds:g})",
        )
    needed = callback.delivery_backoff_max_seconds + callback.timeout_seconds
    if callback.visibility_seconds <= needed:
        # A job waiting for its retry longer than this would be sent again meanwhile.
        raise ConfigError(
            "callback.delivery_visibility_seconds",
            callback.visibility_seconds,
            f"more than delivery_backoff_max_seconds + timeout_seconds ({needed:g})",
        )
    if callback.result_url is not None and "{task_id}" not in callback.result_url:
        raise ConfigError("callback.result_url", callback.result_url, "a URL with {task_id} in it")
