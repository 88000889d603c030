"""Masking: the one place that decides what of a secret may be shown, and shows ``***`` instead.

Three views of the same concern: a URL as check-config and the worker's start line print it
(``mask_url``), the final text of a log line whatever put the secret there (``mask_secrets``),
and a request as the logging hook stores it for whoever reads the stream (``masked_request``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "mask_secrets", "mask_url", "masked_request"]

MASK = "***"

# What a log line may carry, wherever it came from.
_SECRETS = [
    # scheme://user:password@host
    re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)", re.I),
    # Authorization: Basic xxx / Bearer xxx, in headers or their reprs
    re.compile(
        r"(?P<keep>authorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer)\s+)[^\s'\",}]+", re.I
    ),
    # "password": "...", password=..., token / secret / signing_secret / key fields
    re.compile(
        r"(?P<keep>['\"]?\b(?:password|passwd|token|secret|signing_secret|api_key|auth_token)"
        r"['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+",
        re.I,
    ),
    re.compile(r"(?P<keep>)whsec_[A-Za-z0-9+/=]+"),
    re.compile(
        r"(?P<keep>)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
    ),
]

_SECRET_AUTH_FIELDS = ("password", "cert", "key")
# The password of scheme://user:password@host (found by tests/faults: it reached the records).
_URL_PASSWORD = re.compile(r"(?P<keep>^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*(?=@)")


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``, for logs and check-config."""
    if not url or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme: the credentials start the string
        scheme, rest = "", url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:{MASK}@{host}"


def mask_secrets(text: str) -> str:
    """The text with every secret the patterns know replaced by ``***``."""
    for pattern in _SECRETS:
        text = pattern.sub(rf"\g<keep>{MASK}", text)
    return text


def _masked_query(url: str) -> str:
    """Every query value replaced by ``***``: webhook URLs carry their tokens there, by any name."""
    head, mark, query = url.partition("?")
    if not mark:
        return url
    query, hash_mark, _ = query.partition("#")
    pairs = (pair.partition("=") for pair in query.split("&"))
    shown = "&".join(name + (f"={MASK}" if sep else "") for name, sep, _ in pairs)
    return f"{head}?{shown}" + (f"#{MASK}" if hash_mark else "")


def masked_request(request: Any) -> Any:
    """The request with the secrets of ``callback_auth`` and ``callback_url`` masked.

    Of the URL, its password and every query value: records may be kept for years.
    """
    if not isinstance(request, Mapping):
        return request
    masked = dict(request)
    url = request.get("callback_url")
    if isinstance(url, str):
        masked["callback_url"] = _masked_query(_URL_PASSWORD.sub(rf"\g<keep>{MASK}", url))
    auth = request.get("callback_auth")
    if isinstance(auth, Mapping):
        masked["callback_auth"] = {
            k: MASK if k in _SECRET_AUTH_FIELDS else v for k, v in auth.items()
        }
    return masked
