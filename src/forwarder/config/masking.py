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

# A value after its name: quoted (to its closing quote, escapes included, bytes reprs too) or bare
# (to the next separator). Quoted values are masked whole: a password may hold spaces and commas.
_VALUE = r"""(?P<value>b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|[^'"\s,;&}<>]+)"""
_SECRET_NAMES = (
    r"password|passwd|token|secret|signing_secret|api_key|auth_token"
    # AWS credentials: botocore at DEBUG logs the STS reply and the signed request headers.
    # The environment's names (AWS_SECRET_ACCESS_KEY=...) too: "_" joins words, so \b fails there.
    r"|(?:aws_)?secret_?access_?key|(?:aws_)?session_?token|x-amz-security-token"
)

# What a log line may carry, wherever it came from.
_SECRETS = [
    # scheme://user:password@host
    re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<value>[^@\s]+)(?=@)", re.I),
    # Authorization: Basic xxx / Bearer xxx, in headers or their reprs
    re.compile(
        r"(?P<keep>authorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer)\s+)(?P<value>[^\s'\",}]+)",
        re.I,
    ),
    # "password": "...", password=..., token / secret / key fields, AWS credential fields
    re.compile(rf"(?P<keep>['\"]?\b(?:{_SECRET_NAMES})['\"]?\s*[:=]\s*){_VALUE}", re.I),
    # <SecretAccessKey>...</SecretAccessKey> in an STS or IMDS reply
    re.compile(r"(?P<keep><(?:SecretAccessKey|SessionToken)>)(?P<value>[^<]*)", re.I),
    re.compile(r"(?P<keep>)(?P<value>whsec_[A-Za-z0-9+/=]+)"),
    re.compile(
        r"(?P<keep>)(?P<value>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)",
        re.S,
    ),
]

# Words, one of which each of _SECRETS needs to match (case aside): a line without any, nearly
# every line, is left as it is after a few substring scans; the six patterns cost 38 us a line,
# a third of what logging it cost.
_SECRET_WORDS = (
    "://",
    "authorization",
    "password",
    "passwd",
    "token",
    "secret",
    "api_key",
    "whsec_",
    "private key",
)

# A query parameter whose value is a secret: ?password=, ?token=, X-Amz-Security-Token, ...
_SECRET_QUERY = re.compile(
    r"(?P<keep>(?:^|[&;])(?:key|[^=&;#]*(?:password|passwd|token|secret|signature|credential"
    r"|api_?key)[^=&;#]*)=)[^&;#]*",
    re.I,
)
_SECRET_AUTH_FIELDS = ("password", "cert", "key")
# The password of scheme://user:password@host (found by tests/faults: it reached the records).
_URL_PASSWORD = re.compile(r"(?P<keep>^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*(?=@)")


def mask_url(url: str | None) -> str | None:
    """The URL with any password, and the values of secret-named query parameters, as ``***``.

    For logs and check-config. The credentials end at the last ``@`` before the query (an AWS
    secret key may hold ``/``); an ``@`` in the query or the path is no credentials.
    """
    if not url:
        return url
    head, query_mark, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if not sep:  # no scheme: the credentials start the string
        scheme, rest = "", head
    credentials, at, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if at and colon and "/" not in user:
        head = f"{scheme}{sep}{user}:{MASK}@{host}"
    if query_mark:
        query = _SECRET_QUERY.sub(rf"\g<keep>{MASK}", query)
    return f"{head}{query_mark}{query}"


def mask_secrets(text: str) -> str:
    """The text with every secret the patterns know replaced by ``***``, whole."""
    lowered = text.lower()
    if not any(word in lowered for word in _SECRET_WORDS):
        return text
    for pattern in _SECRETS:
        text = pattern.sub(_masked_match, text)
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


def _masked_match(match: re.Match[str]) -> str:
    value = match["value"]
    prefix = "b" if value.startswith(("b'", 'b"')) else ""
    quote = value[len(prefix)]
    if quote in "'\"":  # keep the quotes (and a bytes prefix): the line stays readable
        return f"{match['keep']}{prefix}{quote}{MASK}{quote}"
    return f"{match['keep']}{MASK}"


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
