"""The ``callback`` hook: POST each finished task's result to the requester's URL.

The URL is the request's ``callback_url``, else the configured default; the auth is the request's
``callback_auth`` (HTTP Basic, or a client certificate for mTLS), else the configured default,
which is only ever sent to the default URL's origin.
Every call has a timeout; connection errors, timeouts, 429 and 5xx are tried again with jittered
exponential backoff, up to ``max_attempts`` in all. With a signing secret each call is signed the
Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), the id staying
the same across the attempts of one task so that a receiver can drop duplicates.

Redirects are not followed: a redirect would carry the credentials and the client certificate to a
URL nobody chose. Logs and errors show a URL's origin only, since webhook URLs often carry a token
in their path or query.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth

from forwarder.config.hooks import (
    BasicAuth,
    CallbackAuth,
    CallbackSettings,
    MtlsAuth,
    parse_callback_auth,
)
from forwarder.errors import CallbackError, ConfigError
from forwarder.hooks.base import Hook, TaskOutcome

__all__ = [
    "CallbackHook",
    "checked_url",
    "retry_delay",
    "retryable",
    "sign",
    "signing_key",
]

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
_EXCERPT_BYTES = 200
# Distinct client certificates whose files are kept between tasks; more are written again on use.
_CERT_PAIRS_KEPT = 32
# Receivers are few (one default and the URLs requests name); a gevent worker may call one receiver
# from many greenlets at once, and each keeps its own connection.
_POOL_HOSTS = 16
_POOL_PER_HOST = 32


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after ``whsec_``, else the text's bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ConfigError(
            "callback.signing_secret",
            "(not shown)",
            f"{SECRET_PREFIX} followed by base64, or any text not starting with {SECRET_PREFIX}",
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of id.timestamp.body."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def checked_url(value: object) -> str:
    """``value`` if it is an http or https URL with a host; anything else raises ``CallbackError``."""
    if not isinstance(value, str):
        raise CallbackError(f"callback_url must be a string, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise CallbackError("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackError(
            f"callback_url must be an http:// or https:// URL with a host (scheme given: "
            f"{parts.scheme or 'none'!r})"
        )
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def retryable(status: int) -> bool:
    """Whether a reply with this status is worth another attempt: 429 and 5xx."""
    return status == 429 or 500 <= status <= 599


def retry_delay(attempt: int, base: float, cap: float, retry_after: str | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1), never more than ``cap``.

    A ``Retry-After`` of whole seconds is honoured as given (an HTTP date is not: the backoff
    applies).
    """
    if retry_after is not None and re.fullmatch(r"\s*[0-9]+\s*", retry_after):
        return min(float(retry_after), cap)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    # Callbacks that failed together (a receiver restarting) spread out, each still waiting at
    # least half its backoff.
    return ceiling * random.uniform(0.5, 1.0)


def _describe(exc: requests.RequestException) -> str:
    # requests' own message repeats the whole URL, token and all; its cause does not.
    cause = exc.args[0] if exc.args else exc
    return f"{type(exc).__name__}: {getattr(cause, 'reason', cause)}"


@dataclass
class _CertPair:
    cert: str
    key: str
    users: int = 0


class _ClientCerts:
    """Private files holding client certificates and keys, since requests takes only file names.

    A file pair is written once per distinct certificate and key and reused by later tasks; the
    least recently used pairs beyond ``_CERT_PAIRS_KEPT`` are removed once no call is using them
    (a new TLS connection reads the files). Everything is removed at ``close`` or process exit, by
    the process that wrote it only.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._dir: str | None = None
        self._pairs: OrderedDict[str, _CertPair] = OrderedDict()
        self._names = itertools.count()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def files(self, auth: MtlsAuth) -> Iterator[tuple[str, str]]:
        digest = hashlib.sha256(f"{auth.cert}\0{auth.key}".encode()).hexdigest()
        with self._lock:
            pair = self._pairs.get(digest) or self._write(auth)
            self._pairs[digest] = pair
            self._pairs.move_to_end(digest)
            pair.users += 1
        try:
            yield pair.cert, pair.key
        finally:
            with self._lock:
                pair.users -= 1
                self._trim()

    def _write(self, auth: MtlsAuth) -> _CertPair:
        if self._dir is None:
            # tmpfs where there is one, so that private keys stay off disk; mkdtemp makes it 0700.
            shm = "/dev/shm"
            self._dir = tempfile.mkdtemp(
                prefix="forwarder-callback-",
                dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None,
            )
            atexit.register(self.close)
        name = os.path.join(self._dir, str(next(self._names)))
        pair = _CertPair(cert=f"{name}.crt", key=f"{name}.key")
        for path, text in ((pair.cert, auth.cert), (pair.key, auth.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        return pair

    def _trim(self) -> None:
        idle = [digest for digest, pair in self._pairs.items() if not pair.users]
        for digest in idle[: max(0, len(self._pairs) - _CERT_PAIRS_KEPT)]:
            pair = self._pairs.pop(digest)
            for path in (pair.cert, pair.key):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def close(self) -> None:
        with self._lock:
            if self._dir is None or os.getpid() != self._pid:
                return
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._pairs.clear()


@dataclass
class _ProcessState:
    pid: int
    session: requests.Session
    certs: _ClientCerts = field(default_factory=_ClientCerts)


class CallbackHook(Hook):
    """POSTs ``outcome.response_body()`` as JSON to the callback URL, with auth, retries and signing."""

    name = "callback"

    def __init__(
        self, settings: CallbackSettings, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.settings = settings
        # Decoded now so that a malformed secret stops start-up instead of failing every task.
        self._signing_key = (
            signing_key(settings.signing_secret) if settings.signing_secret else None
        )
        self._timeout = (settings.timeout_seconds, settings.timeout_seconds)
        self._sleep = sleep
        self._state: _ProcessState | None = None
        self._lock = threading.Lock()

    def _process(self) -> _ProcessState:
        # Sockets and certificate files inherited through fork are the parent's: start afresh,
        # and leave theirs alone.
        state = self._state
        if state is None or state.pid != os.getpid():
            with self._lock:
                state = self._state
                if state is None or state.pid != os.getpid():
                    state = self._state = _ProcessState(os.getpid(), self._new_session())
        return state

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=_POOL_HOSTS, pool_maxsize=_POOL_PER_HOST, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def __call__(self, outcome: TaskOutcome) -> None:
        fields = outcome.request_fields
        raw_url = fields.get("callback_url")
        if raw_url is None or raw_url == "":
            raw_url = self.settings.default_url
        if raw_url is None:
            log.debug("no callback URL for task %s: nothing to call", outcome.task_id)
            return
        url = checked_url(raw_url)
        raw_auth = fields.get("callback_auth")
        auth: CallbackAuth | None
        if raw_auth is not None:
            auth = parse_callback_auth(raw_auth, "callback_auth")
        elif self.settings.default_url and _origin(url) == _origin(self.settings.default_url):
            auth = self.settings.default_auth
        else:
            # The configured credentials are for the configured receiver: a request naming
            # another host must not be able to collect them.
            auth = None
        try:
            body = json.dumps(outcome.response_body(), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise CallbackError(
                f"the result of task {outcome.task_id} is not JSON: {exc}"
            ) from None
        state = self._process()
        cert_files: AbstractContextManager[tuple[str, str] | None] = (
            state.certs.files(auth) if isinstance(auth, MtlsAuth) else contextlib.nullcontext()
        )
        with cert_files as cert:
            self._deliver(
                state.session, outcome.task_id, url, body, auth, cert, outcome.trace_headers
            )

    def _deliver(
        self,
        session: requests.Session,
        task_id: str,
        url: str,
        body: bytes,
        auth: CallbackAuth | None,
        cert: tuple[str, str] | None,
        trace_headers: Mapping[str, str],
    ) -> None:
        basic = (
            HTTPBasicAuth(auth.username.encode(), auth.password.encode())
            if isinstance(auth, BasicAuth)
            else None
        )
        shown = _origin(url)
        attempts = self.settings.max_attempts
        last = "none"
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                reply = session.post(
                    url,
                    data=body,
                    headers=self._headers(task_id, body, trace_headers),
                    auth=basic,
                    cert=cert,
                    timeout=self._timeout,
                    allow_redirects=False,
                    # Read no more of the reply than an excerpt: its size is the receiver's choice.
                    stream=True,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = _describe(exc)
            except requests.RequestException as exc:
                raise CallbackError(
                    f"callback for task {task_id} to {shown} failed: {_describe(exc)}"
                ) from None
            else:
                with reply:
                    excerpt = next(reply.iter_content(_EXCERPT_BYTES), b"")
                status = reply.status_code
                if 200 <= status < 300:
                    log.debug("callback for task %s to %s: HTTP %d", task_id, shown, status)
                    return
                last = f"HTTP {status} {excerpt.decode(errors='replace')!r}"
                if not retryable(status):
                    raise CallbackError(
                        f"callback for task {task_id} to {shown} refused: {last} (not retried)"
                    )
                if status in (429, 503):
                    retry_after = reply.headers.get("Retry-After")
            if attempt < attempts:
                delay = retry_delay(
                    attempt,
                    self.settings.backoff_seconds,
                    self.settings.backoff_max_seconds,
                    retry_after,
                )
                log.info(
                    "callback for task %s to %s: %s; attempt %d of %d, next in %.2f s",
                    task_id,
                    shown,
                    last,
                    attempt,
                    attempts,
                    delay,
                )
                self._sleep(delay)
        raise CallbackError(
            f"callback for task {task_id} to {shown} failed after {attempts} attempt(s); "
            f"last: {last}"
        )

    def _headers(
        self, task_id: str, body: bytes, trace_headers: Mapping[str, str]
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **trace_headers}
        if self._signing_key is not None:
            message_id = f"msg_{task_id}"
            timestamp = int(time.time())
            headers["webhook-id"] = message_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(self._signing_key, message_id, timestamp, body)
        return headers

    def close(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.pid == os.getpid():
            state.session.close()
            state.certs.close()
