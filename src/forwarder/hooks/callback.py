"""The ``callback`` hook: POST each finished task's result to the requester's URL.

The URL is the request's ``callback_url``, else the configured default; it must pass the
``UrlPolicy`` (``forwarder.hooks.url_policy``), before the call and again at connect time. The
auth is the request's ``callback_auth`` (HTTP Basic, or a client certificate for mTLS), else the
configured default, which is only ever sent to the default URL itself, read by the client's own
parser. Every attempt and the whole delivery have a total deadline, and an attempt is tried again
on connection errors, timeouts, 408, 429 and 5xx (``forwarder.hooks.delivery``). With a signing
secret each call is signed the Standard Webhooks way (``forwarder.hooks.signing``), once per
secret. With ``callback.delivery: queued`` (the default) the hook only hands a delivery job to its
``enqueue`` and the call is made out of the slot, retried for hours (``forwarder.hooks.deliveries``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import requests

from forwarder.config.hooks import (
    CallbackAuth,
    CallbackSettings,
    parse_callback_auth,
)
from forwarder.config.masking import mask_url
from forwarder.errors import CallbackRefused, ConfigError
from forwarder.hooks.base import Hook, TaskOutcome
from forwarder.hooks.client_certs import ClientCerts
from forwarder.hooks.deliveries.bodies import callback_body
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.delivery import callback_request, deliver
from forwarder.hooks.guarded_http import callback_session
from forwarder.hooks.signing import callback_headers, signing_key
from forwarder.hooks.url_policy import CheckedUrl, UrlPolicy
from forwarder.process_local import ProcessLocal

__all__ = ["CallbackHook", "checked_url"]

log = logging.getLogger(__name__)


def checked_url(value: object, policy: UrlPolicy | None = None) -> CheckedUrl:
    """``value`` as the client reads it, if ``policy`` allows it; ``CallbackRefused`` otherwise."""
    return (policy or UrlPolicy()).check(value)


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
        self.policy = UrlPolicy.from_settings(settings)
        if settings.default_url:
            # Checked now so that a default URL no call would be made to stops start-up.
            try:
                self.policy.check(settings.default_url)
            except CallbackRefused as exc:
                raise ConfigError(
                    "callback.default_url", mask_url(settings.default_url), f"a URL to call: {exc}"
                ) from None
        self._sleep = sleep
        # Sockets and certificate files inherited through fork are the parent's: a child starts
        # afresh, and leaves theirs alone.
        self._state = ProcessLocal(lambda: _ProcessState(self._new_session()))

    def _process(self) -> _ProcessState:
        return self._state.get()

    def _new_session(self) -> requests.Session:
        return callback_session(self.policy)

    def __call__(self, outcome: TaskOutcome) -> None:
        fields = outcome.request_fields
        raw_url = fields.get("callback_url")
        if raw_url is None or raw_url == "":
            raw_url = self.settings.default_url
        if raw_url is None:
            log.debug("no callback URL for task %s: nothing to call", outcome.task_id)
            return
        url = checked_url(raw_url, self.policy)
        auth = self._auth(url, fields.get("callback_auth"))
        body = callback_body(outcome, self.settings)
        if self._enqueue is not None:
            self._enqueue(self._job(outcome, url, body, auth))
            return
        state = self._process()
        headers = partial(
            callback_headers, self._signing_keys, outcome.task_id, body, outcome.trace_headers
        )
        with callback_request(
            outcome.task_id, url.url, body, headers, auth, state.certs
        ) as request:
            deliver(state.session, request, self.settings, self._sleep)

    def _job(
        self, outcome: TaskOutcome, url: CheckedUrl, body: bytes, auth: CallbackAuth | None
    ) -> DeliveryJob:
        raw_auth = outcome.request_fields.get("callback_auth")
        return DeliveryJob(
            task_id=outcome.task_id,
            url=url.url,
            body=body.decode(),
            queue=outcome.queue or "",
            stored_at=time.time(),
            auth=raw_auth,
            # The configured credentials stay in the settings; the job only says they apply.
            default_auth=raw_auth is None and auth is not None,
            trace_headers=dict(outcome.trace_headers),
        )

    def _auth(self, url: CheckedUrl, raw_auth: object) -> CallbackAuth | None:
        if raw_auth is not None:
            return parse_callback_auth(raw_auth, "callback_auth")
        if self.policy.same_url(url, self.settings.default_url):
            return self.settings.default_auth
        # The configured credentials are for the configured receiver: a request naming another
        # URL, even another path of the same host, must not be able to collect them.
        return None

    def close(self) -> None:
        close_queue = getattr(self._enqueue, "close", None)
        if close_queue is not None:
            close_queue()
        state = self._state.take()
        if state is not None:
            state.session.close()
            state.certs.close()
