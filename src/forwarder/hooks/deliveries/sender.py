"""One attempt of a delivery job: the job's request built, signed, and POSTed once.

The HTTP attempt is ``forwarder.hooks.delivery.attempt`` and the signature
``forwarder.hooks.signing``, as the inline callback uses them; the waiting between attempts is
the broker's (``forwarder.hooks.deliveries.runner``), never a sleep in a slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

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
from forwarder.hooks.client_certs import ClientCerts
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.delivery import Attempt, CallbackRequest, attempt
from forwarder.hooks.signing import signature_headers, signing_key
from forwarder.process_local import ProcessLocal

__all__ = ["Sender"]

# A deliverer's slots share one pool; receivers are few.
_POOL_HOSTS = 16
_POOL_PER_HOST = 32


@dataclass
class _ProcessState:
    session: requests.Session
    certs: ClientCerts = field(default_factory=ClientCerts)


def _new_session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=_POOL_HOSTS, pool_maxsize=_POOL_PER_HOST, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Sender:
    """Sends one attempt of a job, with its auth and one signature per configured secret."""

    def __init__(self, settings: CallbackSettings) -> None:
        self.settings = settings
        # Decoded now so that a malformed secret stops start-up instead of failing every job.
        self._keys = tuple(signing_key(secret) for secret in settings.signing_secrets)
        self._timeout = (settings.timeout_seconds, settings.timeout_seconds)
        self._state = ProcessLocal(lambda: _ProcessState(_new_session()))

    def send(self, job: DeliveryJob) -> Attempt:
        auth = self._auth(job)
        body = job.body.encode()
        state = self._state.get()
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
                task_id=job.task_id,
                url=job.url,
                body=body,
                headers=lambda: self._headers(job.task_id, body, job.trace_headers),
                auth=basic,
                cert=cert,
            )
            return attempt(state.session, request, self._timeout)

    def _auth(self, job: DeliveryJob) -> CallbackAuth | None:
        if job.auth is not None:
            return parse_callback_auth(job.auth, "callback_auth")
        return self.settings.default_auth if job.default_auth else None

    def _headers(
        self, task_id: str, body: bytes, trace_headers: Mapping[str, str]
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **trace_headers}
        if self._keys:
            headers.update(signature_headers(self._keys, task_id, body))
        return headers

    def close(self) -> None:
        state = self._state.take()
        if state is not None:
            state.session.close()
            state.certs.close()
