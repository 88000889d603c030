"""The ``callback`` hook: POST each finished task's result to the requester's URL.

The URL is the request's ``callback_url``, else the configured default; the auth is the request's
``callback_auth`` (HTTP Basic, or a client certificate for mTLS), else the configured default,
which is only ever sent to the default URL's origin. Every call has a timeout and is tried again
on connection errors, timeouts, 429 and 5xx (``forwarder.hooks.delivery``). With a signing secret
each call is signed the Standard Webhooks way (``forwarder.hooks.signing``), once per secret.
With ``callback.delivery: queued`` (the default) the hook only hands a delivery job to its
``enqueue`` and the call is made out of the slot, retried for hours (``forwarder.hooks.deliveries``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
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
from forwarder.errors import CallbackError
from forwarder.hooks.base import Hook, TaskOutcome
from forwarder.hooks.client_certs import ClientCerts
from forwarder.hooks.deliveries.bodies import callback_body
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.delivery import CallbackRequest, deliver, origin
from forwarder.hooks.signing import signature_headers, signing_key
from forwarder.process_local import ProcessLocal

__all__ = ["CallbackHook", "checked_url"]

log = logging.getLogger(__name__)

# Receivers are few (one default and the URLs requests name); a gevent worker may call one receiver
# from many greenlets at once, and each keeps its own connection.
_POOL_HOSTS = 16
_POOL_PER_HOST = 32


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


@dataclass
class _ProcessState:
    session: requests.Session
    certs: ClientCerts = field(default_factory=ClientCerts)


class CallbackHook(Hook):
    """POSTs ``outcome.response_body()`` as JSON to the callback URL, with auth, retries and signing."""

    name = "callback"

    def __init__(
        self,
        settings: CallbackSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        enqueue: Callable[[DeliveryJob], None] | None = None,
    ) -> None:
        self.settings = settings
        # Decoded now so that a malformed secret stops start-up instead of failing every task.
        self._signing_keys = tuple(signing_key(secret) for secret in settings.signing_secrets)
        self._enqueue = enqueue
        self._timeout = (settings.timeout_seconds, settings.timeout_seconds)
        self._sleep = sleep
        # Sockets and certificate files inherited through fork are the parent's: a child starts
        # afresh, and leaves theirs alone.
        self._state = ProcessLocal(lambda: _ProcessState(self._new_session()))

    def _process(self) -> _ProcessState:
        return self._state.get()

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
        auth = self._auth(url, fields.get("callback_auth"))
        body = callback_body(outcome, self.settings)
        if self._enqueue is not None:
            self._enqueue(self._job(outcome, url, body, auth))
            return
        state = self._process()
        cert_files: AbstractContextManager[tuple[str, str] | None] = (
            state.certs.files(auth) if isinstance(auth, MtlsAuth) else contextlib.nullcontext()
        )
        basic = (
            HTTPBasicAuth(auth.username.encode(), auth.password.encode())
            if isinstance(auth, BasicAuth)
            else None
        )
        with cert_files as cert:
            request = CallbackRequest(
                task_id=outcome.task_id,
                url=url,
                body=body,
                headers=lambda: self._headers(outcome.task_id, body, outcome.trace_headers),
                auth=basic,
                cert=cert,
            )
            deliver(state.session, request, self.settings, self._timeout, self._sleep)

    def _job(
        self, outcome: TaskOutcome, url: str, body: bytes, auth: CallbackAuth | None
    ) -> DeliveryJob:
        raw_auth = outcome.request_fields.get("callback_auth")
        return DeliveryJob(
            task_id=outcome.task_id,
            url=url,
            body=body.decode(),
            queue=outcome.queue or "",
            stored_at=time.time(),
            auth=raw_auth,
            # The configured credentials stay in the settings; the job only says they apply.
            default_auth=raw_auth is None and auth is not None,
            trace_headers=dict(outcome.trace_headers),
        )

    def _auth(self, url: str, raw_auth: object) -> CallbackAuth | None:
        if raw_auth is not None:
            return parse_callback_auth(raw_auth, "callback_auth")
        if self.settings.default_url and origin(url) == origin(self.settings.default_url):
            return self.settings.default_auth
        # The configured credentials are for the configured receiver: a request naming another
        # host must not be able to collect them.
        return None

    def _headers(
        self, task_id: str, body: bytes, trace_headers: Mapping[str, str]
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **trace_headers}
        if self._signing_keys:
            headers.update(signature_headers(self._signing_keys, task_id, body))
        return headers

    def close(self) -> None:
        close_queue = getattr(self._enqueue, "close", None)
        if close_queue is not None:
            close_queue()
        state = self._state.take()
        if state is not None:
            state.session.close()
            state.certs.close()
