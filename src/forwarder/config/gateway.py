"""The gateway's part of the settings: where it listens, what it accepts, and its defaults.

They come from the config file's top-level ``gateway`` section (``--set gateway.port=8080``
applies), the environment (``FORWARDER_GATEWAY_HOST``, ``FORWARDER_GATEWAY_PORT``,
``FORWARDER_GATEWAY_TOKENS``: comma-separated) and the ``gateway`` command's ``--host`` and
``--port``; each wins over the one before. Like every setting, a value that is not allowed raises
``ConfigError`` naming the key, the value and what is allowed. Tokens are never shown: not in a
``repr``, an error or ``check-config``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from forwarder.config.parsers import (
    Invalid,
    hostname,
    non_negative_number,
    positive_int,
    positive_number,
)
from forwarder.errors import ConfigError

__all__ = [
    "GATEWAY_FLAGS",
    "GATEWAY_SECTION",
    "GatewaySettings",
    "masked_gateway_document",
    "parse_gateway_settings",
]

GATEWAY_SECTION = "gateway"
GATEWAY_FLAGS = ("--host", "--port")
TOKENS_ENV = "FORWARDER_GATEWAY_TOKENS"
MIN_TOKEN_LENGTH = 16
# Printable ASCII without spaces or commas: what an Authorization header carries as is, and what
# the comma-separated variable can hold.
_TOKEN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (logged once listening)
    max_body_bytes: int = 1_048_576
    # Empty: no authentication. Otherwise every /v1 route needs one of these as a bearer token.
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    # None: no limit. A request's own ttl_seconds / timeout_seconds wins over these.
    default_ttl_seconds: float | None = None
    default_timeout_seconds: float | None = None
    idempotency_retention_seconds: float = 86400.0


def _listen_port(value: object) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 0 <= number <= 65535:
        raise Invalid("a port number from 0 to 65535 (0 picks a free port)")
    return number


def _no_limit_if_zero(value: object) -> float | None:
    seconds = non_negative_number(value)
    return seconds or None


def _tokens(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise Invalid("a list of tokens, or one comma-separated string")
    for token in value:
        if (
            not isinstance(token, str)
            or len(token) < MIN_TOKEN_LENGTH
            or not _TOKEN.fullmatch(token)
        ):
            raise Invalid(
                f"tokens of at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                "without spaces or commas"
            )
    return tuple(dict.fromkeys(value))


_PARSERS: dict[str, Callable[[object], Any]] = {
    "host": hostname,
    "port": _listen_port,
    "max_body_bytes": positive_int,
    "auth_tokens": _tokens,
    "default_ttl_seconds": _no_limit_if_zero,
    "default_timeout_seconds": _no_limit_if_zero,
    "idempotency_retention_seconds": positive_number,
}
_ENV = {
    "host": "FORWARDER_GATEWAY_HOST",
    "port": "FORWARDER_GATEWAY_PORT",
    "auth_tokens": TOKENS_ENV,
}
_FLAGS = {"host": "--host", "port": "--port"}
_SECRET = {"auth_tokens"}


def _section(document: Mapping[str, Any]) -> dict[str, Any]:
    value = document.get(GATEWAY_SECTION)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(GATEWAY_SECTION, value, "a mapping of settings")
    allowed = [f.name for f in fields(GatewaySettings)]
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{GATEWAY_SECTION}.{key}",
                value[key],
                f"unknown key; allowed: {', '.join(allowed)}",
            )
    return dict(value)


def parse_gateway_settings(
    document: Mapping[str, Any],
    env: Mapping[str, str],
    flags: Mapping[str, object],
) -> GatewaySettings:
    """The gateway settings from the file's ``gateway`` section, the environment and the flags."""
    file_values = _section(document)
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        flag, variable = _FLAGS.get(name), _ENV.get(name)
        if flag and flags.get(flag) is not None:
            key, raw = flag, flags[flag]
        elif variable and env.get(variable, "").strip():
            key, raw = variable, env[variable].strip()
        elif file_values.get(name) is not None:
            key, raw = f"{GATEWAY_SECTION}.{name}", file_values[name]
        else:
            continue
        try:
            values[name] = parse(raw)
        except Invalid as exc:
            raise ConfigError(key, "(not shown)" if name in _SECRET else raw, str(exc)) from None
    return GatewaySettings(**values)


def masked_gateway_document(gateway: GatewaySettings) -> dict[str, Any]:
    """The gateway settings as a config file would hold them, each token shown as ``***``."""
    document = asdict(gateway)
    document["auth_tokens"] = ["***"] * len(gateway.auth_tokens)
    return {GATEWAY_SECTION: document}
