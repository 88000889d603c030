"""Parsers for setting values: each returns the typed value or raises ``Invalid(what is allowed)``.

Values arrive as YAML scalars (already typed) or as strings (environment, flags), so each parser
accepts both forms of the same thing and nothing else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "BROKER_SCHEMES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MIN_TOKEN_LENGTH",
    "RESULT_BACKEND_SCHEMES",
    "S3_CHECKSUMS",
    "TASK_VISIBILITY_SECONDS",
    "TRACING",
    "Invalid",
    "S3Location",
    "boolean",
    "broker_url",
    "bucket",
    "choice",
    "expanded_path",
    "folder",
    "gateway_url",
    "host_patterns",
    "hostname",
    "http_url",
    "labels",
    "listen_port",
    "node_name",
    "non_negative_int",
    "non_negative_number",
    "nonempty",
    "optional",
    "port",
    "positive_int",
    "positive_number",
    "result_backend_url",
    "route",
    "s3_location",
    "s3_prefix",
    "seconds_or_no_limit",
    "text",
    "tokens",
]

BROKER_SCHEMES = ("redis", "rediss")
RESULT_BACKEND_SCHEMES = ("redis", "rediss", "file", "s3")
S3_CHECKSUMS = ("sha256",)
TASK_VISIBILITY_SECONDS = {
    "VISIBILITY_1M": 60,
    "VISIBILITY_10M": 600,
    "VISIBILITY_1H": 3600,
    "VISIBILITY_24H": 86400,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
TRACING = ("off", "otel")
MIN_TOKEN_LENGTH = 16

_HOSTNAME = re.compile(r"^[A-Za-z0-9_.\-]+$|^\[[0-9A-Fa-f:.]+\]$")
# S3's rule for a bucket name: 3 to 63 lower-case letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Printable ASCII without spaces or commas: what an Authorization header carries as is, and what
# the comma-separated variable can hold.
_NODE_NAME = re.compile(r"[\x21-\x7e]{1,255}")
_TOKEN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


class Invalid(ValueError):
    """The value is not allowed; the message says what is."""


def nonempty(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string")
    return value.strip()


def text(value: object) -> str:
    """A non-empty string; a number in YAML is taken as its text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid("a string")
    return nonempty(str(value))


def folder(value: object) -> Path:
    return Path(nonempty(os.fspath(value) if isinstance(value, os.PathLike) else value))


def expanded_path(value: object) -> Path:
    return Path(text(value)).expanduser()


def labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise Invalid("a mapping of label names to strings")
    return {k: str(v) for k, v in value.items()}


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Invalid("true or false")


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return None


def positive_int(value: object) -> int:
    number = _integer(value)
    if number is None or number < 1:
        raise Invalid("a positive whole number")
    return number


def non_negative_int(value: object) -> int:
    number = _integer(value)
    if number is None or number < 0:
        raise Invalid("a whole number, 0 or more")
    return number


def port(value: object) -> int:
    number = _integer(value)
    if number is None or not 1 <= number <= 65535:
        raise Invalid("a port number from 1 to 65535")
    return number


def listen_port(value: object) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 0 <= number <= 65535:
        raise Invalid("a port number from 0 to 65535 (0 picks a free port)")
    return number


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def positive_number(value: object) -> float:
    number = _number(value)
    if number is None or not number > 0 or number == float("inf"):
        raise Invalid("a positive number of seconds")
    return number


def non_negative_number(value: object) -> float:
    number = _number(value)
    if number is None or not number >= 0 or number == float("inf"):
        raise Invalid("a number of seconds, 0 or more (0 means no limit)")
    return number


def seconds_or_no_limit(value: object) -> float | None:
    """A number of seconds; 0 means no limit (None)."""
    seconds = non_negative_number(value)
    return seconds or None


def choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.strip() not in allowed:
            raise Invalid(f"one of {', '.join(allowed)}")
        return value.strip()

    return parse


def optional(parse: Callable[[object], object]) -> Callable[[object], object]:
    def parse_optional(value: object) -> object:
        return None if value is None else parse(value)

    return parse_optional


def route(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or " " in value:
        raise Invalid("a path starting with /, for example /predict")
    return value


def hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise Invalid("a host name or IP address, without scheme or port, for example localhost")
    return value


def node_name(value: object) -> str:
    """A Celery node name such as ``gpu-1@%h``: printable, without spaces."""
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value.strip()):
        raise Invalid("a node name without spaces, for example worker-1@%h")
    return value.strip()


def _url(value: object, schemes: tuple[str, ...], example: str) -> str:
    allowed = f"a URL with scheme {', '.join(schemes)}, for example {example}"
    if not isinstance(value, str):
        raise Invalid(allowed)
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise Invalid(allowed) from None
    if parts.scheme not in schemes:
        raise Invalid(allowed)
    # file:// needs a folder; every other scheme needs a host.
    if not (parts.path.strip("/") if parts.scheme == "file" else parts.hostname):
        raise Invalid(allowed)
    return value.strip()


def broker_url(value: object) -> str:
    return _url(value, BROKER_SCHEMES, "redis://127.0.0.1:6379/0")


def result_backend_url(value: object) -> str:
    url = _url(value, RESULT_BACKEND_SCHEMES, "redis://127.0.0.1:6379/1")
    if url.startswith("s3://"):
        s3_location(url)
    return url


def bucket(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not _BUCKET.fullmatch(text):
        raise Invalid("an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens")
    return text


def s3_prefix(value: object) -> str:
    """A key prefix in a bucket: "" or a path ending in "/"."""
    if not isinstance(value, str):
        raise Invalid("a key prefix such as tmp/celery/")
    prefix = value.strip().strip("/")
    return f"{prefix}/" if prefix else ""


class S3Location(NamedTuple):
    bucket: str
    prefix: str  # "" or ending in "/"
    checksum: str | None  # "sha256" or None


def s3_location(url: str) -> S3Location:
    """``s3://BUCKET[/PREFIX][?checksum=sha256]``: where results go, and how they are checked."""
    allowed = "s3://BUCKET[/PREFIX][?checksum=sha256], for example s3://results/inference"
    try:
        parts = urlsplit(url.strip())
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise Invalid(allowed) from None
    options = dict(query)
    if (
        parts.scheme != "s3"
        or not _BUCKET.fullmatch(parts.netloc)
        or parts.fragment
        or len(options) != len(query)
        or set(options) - {"checksum"}
        or options.get("checksum", S3_CHECKSUMS[0]) not in S3_CHECKSUMS
    ):
        raise Invalid(allowed)
    prefix = parts.path.strip("/")
    return S3Location(parts.netloc, f"{prefix}/" if prefix else "", options.get("checksum"))


def http_url(value: object) -> str:
    return _url(value, ("https", "http"), "https://sqs.us-east-1.amazonaws.com/123456789012/queue")


def gateway_url(value: object) -> str:
    try:
        return http_url(value)
    except Invalid:
        raise Invalid("an http(s) URL, for example http://127.0.0.1:8000") from None


def tokens(value: object) -> tuple[str, ...]:
    """Bearer tokens: a list, or one comma-separated string; duplicates dropped, order kept."""
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


def host_patterns(value: object) -> tuple[str, ...]:
    """Host names, each exact or ``*.suffix``: a list, or one comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    allowed = "a list of host names or *.suffix patterns, for example [api.example.com, *.internal]"
    if not isinstance(value, list | tuple):
        raise Invalid(allowed)
    for pattern in value:
        name = pattern.removeprefix("*.") if isinstance(pattern, str) else None
        if name is None or not _HOSTNAME.fullmatch(name) or "*" in name:
            raise Invalid(allowed)
    return tuple(dict.fromkeys(value))
