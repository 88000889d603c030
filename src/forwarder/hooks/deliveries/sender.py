"""One attempt of a delivery job: the job's request built, signed, and POSTed once.

The HTTP attempt is ``forwarder.hooks.delivery.attempt`` through a
``forwarder.hooks.guarded_http.callback_session``, and the signature ``forwarder.hooks.signing``,
as the inline callback uses them: the job's URL passes the same ``UrlPolicy`` again when it is
sent, and every address it connects to is checked. The waiting between attempts is the broker's
(``forwarder.hooks.deliveries.runner``), never a sleep in a slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import requests

from forwarder.config.hooks import (
    CallbackAuth,
    CallbackSettings,
    parse_callback_auth,
)
from forwarder.errors import CallbackRefused
from forwarder.hooks.client_certs import ClientCerts
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.delivery import Attempt, attempt, callback_request
from forwarder.hooks.guarded_http import callback_session
from forwarder.hooks.signing import callback_headers, signing_key
from forwarder.hooks.url_policy import CheckedUrl, UrlPolicy
from forwarder.process_local import ProcessLocal

__all__ = ["Sender"]


@dataclass
class _ProcessState:
    session: requests.Session
    certs: ClientCerts = field(default_factory=ClientCerts)


class Sender:
    """Sends one attempt of a job, with its auth and one signature per configured secret."""

    def __init__(self, settings: CallbackSettings) -> None:
        self.settings = settings
        # Decoded now so that a malformed secret stops start-up instead of failing every job.
        self._keys = tuple(signing_key(secret) for secret in settings.signing_secrets)
        self.policy = UrlPolicy.from_settings(settings)
        self._state = ProcessLocal(lambda: _ProcessState(callback_session(self.policy)))

    def send(self, job: DeliveryJob) -> Attempt:
        try:
            url = self.policy.check(job.url)
        except CallbackRefused as exc:
            return Attempt(False, problem=str(exc))
        auth = self._auth(job, url)
        body = job.body.encode()
        state = self._state.get()
        headers = partial(callback_headers, self._keys, job.task_id, body, job.trace_headers)
        with callback_request(job.task_id, url.url, body, headers, auth, state.certs) as request:
            try:
                return attempt(state.session, request, self.settings.timeout_seconds)
            except CallbackRefused as exc:  # an address the host resolved to is not allowed
                return Attempt(False, problem=str(exc))

    def _auth(self, job: DeliveryJob, url: CheckedUrl) -> CallbackAuth | None:
        if job.auth is not None:
            return parse_callback_auth(job.auth, "callback_auth")
        # Decided again here: a job on the queue, whoever put it there, gets the configured
        # credentials only for the default URL itself.
        default_url = self.settings.default_url
        if job.default_auth and default_url and self.policy.same_url(url, default_url):
            return self.settings.default_auth
        return None

    def close(self) -> None:
        state = self._state.take()
        if state is not None:
            state.session.close()
            state.certs.close()
