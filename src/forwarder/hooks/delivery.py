"""Delivering one callback: the same request tried until the receiver takes it, or gives up.

Connection errors, timeouts, 408, 429 and 5xx are tried again with jittered exponential backoff (a
``Retry-After`` of whole seconds is honoured, up to the cap), up to ``max_attempts`` in all; any
other reply is final, and so is a refused URL or address (``CallbackRefused``). Each attempt ends
within ``timeout_seconds``, connection to last byte, and the whole delivery, waits included, within
``deadline_seconds``: no receiver can hold the slot longer. The session must be a
``forwarder.hooks.guarded_http.callback_session``: it checks every address it connects to.
Redirects are not followed: a redirect would carry the credentials and the client certificate
to a URL nobody chose. Logs and errors show a URL's origin only, since webhook URLs often carry
a token in their path or query; and no more of a reply is read than an excerpt, since its size
is the receiver's choice.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import HTTPBasicAuth

from forwarder.backoff import backoff
from forwarder.config.hooks import BasicAuth, CallbackAuth, CallbackSettings, MtlsAuth
from forwarder.errors import CallbackError
from forwarder.hooks.client_certs import ClientCerts
from forwarder.hooks.guarded_http import attempt_deadline

__all__ = [
    "Attempt",
    "CallbackRequest",
    "attempt",
    "callback_request",
    "deliver",
    "origin",
    "retry_delay",
    "retryable",
]

log = logging.getLogger(__name__)

_EXCERPT_BYTES = 200


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: all of it that logs and errors may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def retryable(status: int) -> bool:
    """Whether a reply with this status is worth another attempt: 408, 429 and 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def retry_delay(attempt: int, base: float, cap: float, retry_after: str | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1), never more than ``cap``.

    A ``Retry-After`` of whole seconds is honoured as given (an HTTP date is not: the backoff
    applies).
    """
    if retry_after is not None and re.fullmatch(r"\s*[0-9]+\s*", retry_after):
        return min(float(retry_after), cap)
    return backoff(attempt - 1, base, cap)


def _describe(exc: requests.RequestException) -> str:
    # requests' own message repeats the whole URL, token and all; its cause does not.
    cause = exc.args[0] if exc.args else exc
    return f"{type(exc).__name__}: {getattr(cause, 'reason', cause)}"


@dataclass(frozen=True)
class CallbackRequest:
    """What every attempt of one task's callback sends; ``headers`` are made per attempt."""

    task_id: str
    url: str
    body: bytes
    headers: Callable[[], dict[str, str]]
    auth: Any = None  # requests' auth object, or None
    cert: tuple[str, str] | None = None  # client certificate and key files

    @property
    def shown(self) -> str:
        return f"callback for task {self.task_id} to {origin(self.url)}"


@contextlib.contextmanager
def callback_request(
    task_id: str,
    url: str,
    body: bytes,
    headers: Callable[[], dict[str, str]],
    auth: CallbackAuth | None,
    certs: ClientCerts,
) -> Iterator[CallbackRequest]:
    """The request, with ``auth`` as requests takes it: HTTP Basic, or a client certificate's
    files, kept while the block runs."""
    cert_files: AbstractContextManager[tuple[str, str] | None] = (
        certs.files(auth) if isinstance(auth, MtlsAuth) else contextlib.nullcontext()
    )
    basic = (
        HTTPBasicAuth(auth.username.encode(), auth.password.encode())
        if isinstance(auth, BasicAuth)
        else None
    )
    with cert_files as cert:
        yield CallbackRequest(task_id, url, body, headers, auth=basic, cert=cert)


@dataclass(frozen=True)
class _Failed:
    problem: str
    retry_after: str | None = None


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: delivered, worth another try, or refused for good."""

    delivered: bool
    status: int | None = None  # the reply's status; None when no reply came
    problem: str = ""
    retry: bool = False  # worth another attempt
    retry_after: str | None = None


def deliver(
    session: requests.Session,
    request: CallbackRequest,
    settings: CallbackSettings,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """POST ``request`` until it is taken; ``CallbackError`` once it is refused or out of tries.

    Every attempt and every wait fit in ``settings.deadline_seconds`` from now.
    """
    ends = time.monotonic() + settings.deadline_seconds
    attempts = settings.max_attempts
    last = "none"
    for attempt in range(1, attempts + 1):
        seconds = min(settings.timeout_seconds, ends - time.monotonic())
        failed = _attempt(session, request, seconds)
        if failed is None:
            return
        last = failed.problem
        if attempt == attempts:
            break
        delay = retry_delay(
            attempt, settings.backoff_seconds, settings.backoff_max_seconds, failed.retry_after
        )
        if time.monotonic() + delay >= ends:
            raise CallbackError(
                f"{request.shown} failed after {attempt} attempt(s), no time left within "
                f"callback.deadline_seconds ({settings.deadline_seconds:g}); last: {last}"
            )
        log.info(
            "%s: %s; attempt %d of %d, next in %.2f s",
            request.shown,
            last,
            attempt,
            attempts,
            delay,
        )
        sleep(delay)
    raise CallbackError(f"{request.shown} failed after {attempts} attempt(s); last: {last}")


def _attempt(session: requests.Session, request: CallbackRequest, seconds: float) -> _Failed | None:
    """None once delivered; what failed when it is worth another try; raises when it is not."""
    result = attempt(session, request, seconds)
    if result.delivered:
        return None
    if not result.retry:
        suffix = " (not retried)" if result.status is not None else ""
        verb = "refused" if result.status is not None else "failed"
        raise CallbackError(f"{request.shown} {verb}: {result.problem}{suffix}")
    return _Failed(result.problem, result.retry_after)


def attempt(session: requests.Session, request: CallbackRequest, seconds: float) -> Attempt:
    """POST ``request`` once, connection to last byte within ``seconds``.

    Never raises for what the receiver or the network did; ``CallbackRefused`` when the URL or
    an address it resolves to is not allowed (the session's check), as nothing was sent.
    """
    with attempt_deadline(seconds) as deadline:
        try:
            reply = session.post(
                request.url,
                data=request.body,
                headers=request.headers(),
                auth=request.auth,
                cert=request.cert,
                timeout=(seconds, seconds),
                allow_redirects=False,
                stream=True,
            )
            with reply:
                excerpt = next(reply.iter_content(_EXCERPT_BYTES), b"")
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if deadline.expired:
                problem = f"no whole reply within {seconds:.3g} s (timeout_seconds)"
                return Attempt(False, problem=problem, retry=True)
            return Attempt(False, problem=_describe(exc), retry=True)
        except requests.RequestException as exc:
            return Attempt(False, problem=_describe(exc))
    status = reply.status_code
    if 200 <= status < 300:
        log.debug("%s: HTTP %d", request.shown, status)
        return Attempt(True, status)
    problem = f"HTTP {status} {excerpt.decode(errors='replace')!r}"
    retry_after = reply.headers.get("Retry-After") if status in (429, 503) else None
    return Attempt(False, status, problem, retryable(status), retry_after)
