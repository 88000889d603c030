"""Forward one payload to the model server and shape its reply as model-engine's async result.

One keep-alive urllib3 connection pool per process (a fresh one after fork), never one per task.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import certifi
import requests
import urllib3

from forwarder.config.settings import ModelServerSettings, WorkerSettings
from forwarder.errors import (
    ModelResponseError,
    ModelServerTimeout,
    ModelServerUnavailable,
    PayloadError,
)
from forwarder.events import EventWriter
from forwarder.process_local import ProcessLocal
from forwarder.worker.replies import BoundedReader, reading
from forwarder.worker.streaming import StreamReader, stream_kind

__all__ = ["Forwarder", "unwrap_payload", "wrap_response"]

log = logging.getLogger(__name__)

SERIALIZE_KEY = "serialize_results_as_string"
_REPLY_EXCERPT = 200
READINESS_READ_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE_BYTES = WorkerSettings.max_response_bytes


def unwrap_payload(payload: Mapping[str, Any], model: ModelServerSettings) -> tuple[Any, bool]:
    """The body to POST and whether to serialise the result as a string.

    Like model-engine, a payload (or its ``args``) may carry ``serialize_results_as_string`` to
    override the setting for that request; a non-boolean there is ignored.
    """
    serialize = _payload_serialize_flag(payload)
    body: Any = payload
    if model.model_engine_unwrap:
        _refuse_pickles(payload)
        body = payload.get("args", payload)
        if serialize is None and isinstance(body, Mapping):
            serialize = _payload_serialize_flag(body)
    return body, model.serialize_results_as_string if serialize is None else serialize


def _refuse_pickles(payload: Mapping[str, Any]) -> None:
    """Fail a request that needs unpickling: nothing from a message is ever unpickled."""
    if payload.get("cloudpickle") is not None:
        raise PayloadError(
            "payload field cloudpickle is not supported: the forwarder never unpickles; "
            "send the model's input as JSON in args"
        )
    if payload.get("return_pickled") not in (None, False):
        raise PayloadError(
            f"return_pickled={payload['return_pickled']!r} is not supported: results are "
            "JSON; send return_pickled=false or leave it out"
        )


def _payload_serialize_flag(payload: Mapping[str, Any]) -> bool | None:
    value = payload.get(SERIALIZE_KEY)
    if value is None:
        return None
    if not isinstance(value, bool):
        log.warning("ignoring %s=%r in payload: expected true or false", SERIALIZE_KEY, value)
        return None
    return value


def wrap_response(
    response: Any, status_code: int, model: ModelServerSettings, serialize_as_string: bool
) -> Any:
    """``{"result": ..., "status_code": ...}`` as configured, or the bare response."""
    if not model.wrap_response:
        return response
    wrapped: dict[str, Any] = {"result": json.dumps(response) if serialize_as_string else response}
    if model.forward_http_status_in_body:
        wrapped["status_code"] = status_code
    return wrapped


class Forwarder:
    """POSTs payloads to the model server over a per-process keep-alive connection pool.

    The call goes through urllib3 itself: requests' session layer cost about 40% more CPU per
    call, and this is the one request every task makes.
    """

    def __init__(
        self,
        model: ModelServerSettings,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.model = model
        self.max_response_bytes = max_response_bytes
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        # A pool inherited through fork shares its sockets with the parent: each builds its own.
        self._session = ProcessLocal(self._new_session)
        self._route = ProcessLocal(self._new_route)

    def session(self) -> urllib3.PoolManager:
        return self._session.get()

    def _new_route(self) -> tuple[urllib3.PoolManager | urllib3.HTTPConnectionPool, str]:
        """What a predict request is opened with, and the target it names.

        Without a proxy, the model's own connection pool and the URL's path: the manager would
        parse the URL and look the pool up again on every request.
        """
        session, url = self.session(), self.model.predict_url
        if isinstance(session, urllib3.ProxyManager):
            return session, url
        return session.connection_from_url(url), urllib3.util.parse_url(url).request_uri

    def _new_session(self) -> urllib3.PoolManager:
        # Retries are the task's job (with backoff, through the broker); sized so that every
        # greenlet of a gevent worker keeps its connection instead of reconnecting per request.
        options: dict[str, Any] = {
            "maxsize": self.pool_size,
            "retries": False,
            "timeout": urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]),
            # The CA bundle (forwarder.async.ca_bundle) and proxies requests would use, read once
            # rather than per request.
            "ca_certs": self.model.ca_bundle or certifi.where(),
        }
        proxy = requests.utils.get_environ_proxies(self.model.predict_url).get(
            urllib3.util.parse_url(self.model.predict_url).scheme or "http"
        )
        if proxy:
            return urllib3.ProxyManager(proxy, **options)
        return urllib3.PoolManager(**options)

    def __call__(
        self,
        payload: object,
        headers: Mapping[str, str] | None = None,
        events: EventWriter | None = None,
    ) -> Any:
        """The shaped reply; a streamed reply's pieces go to ``events`` as they arrive."""
        if not isinstance(payload, Mapping):
            raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
        body, serialize_as_string = unwrap_payload(payload, self.model)
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"payload cannot be sent as JSON: {exc}") from None
        url = self.model.predict_url
        opener, target = self._route.get()
        try:
            reply = opener.urlopen(
                "POST",
                target,
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
                preload_content=False,
                redirect=False,
            )
        except urllib3.exceptions.ReadTimeoutError:
            raise self._timed_out(url) from None
        except urllib3.exceptions.HTTPError as exc:
            # Refused, reset, a connect timeout, TLS: the server is not (yet) there to answer.
            raise ModelServerUnavailable(
                f"cannot connect to model server at {url}: {exc}"
            ) from None
        with reading(reply, url, self.timeout[1]):
            reader = BoundedReader(reply, url, self.max_response_bytes)
            kind = stream_kind(reply.headers.get("Content-Type"))
            if kind is not None:
                streamed = self._read_stream(reader, kind, events)
                return wrap_response(streamed, reply.status, self.model, serialize_as_string)
            body_bytes = reader.read()
        try:
            response = json.loads(body_bytes)
        except ValueError:
            excerpt = body_bytes[:_REPLY_EXCERPT].decode("utf-8", "replace")
            raise ModelResponseError(
                f"model server at {url} replied HTTP {reply.status} with a body that is not "
                f"JSON ({reply.headers.get('Content-Type', 'no content type')}, "
                f"{len(body_bytes)} bytes): {excerpt!r}"
            ) from None
        return wrap_response(response, reply.status, self.model, serialize_as_string)

    def _read_stream(self, reader: BoundedReader, kind: str, events: EventWriter | None) -> Any:
        stream = StreamReader(kind, events)
        try:
            return stream.read(reader.chunks())
        except urllib3.exceptions.ProtocolError as exc:
            if not stream.assembler.chunks:
                raise
            # Not retried: the chunks already recorded would be recorded again.
            raise ModelResponseError(
                f"model server at {reader.url} broke off its stream after "
                f"{len(stream.assembler.chunks)} chunks: {exc}"
            ) from None

    def _timed_out(self, url: str) -> ModelServerTimeout:
        return ModelServerTimeout(
            f"model server at {url} did not reply within {self.timeout[1]:g} s"
        )

    def wait_until_ready(
        self,
        timeout: float = 0.0,
        *,
        interval: float = 1.0,
        log_every: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Block until the readiness route answers 200; ``timeout`` 0 waits for ever."""
        url = self.model.healthcheck_url
        started = last_log = time.monotonic()
        log.info("waiting for model server to be ready at %s", url)
        while True:
            # A readiness route answers at once or not at all: no need for the model's timeout.
            probe_timeout = (self.timeout[0], min(self.timeout[1], READINESS_READ_TIMEOUT))
            if timeout:
                # A readiness route that hangs must not hold the wait past its own timeout.
                left = max(timeout - (time.monotonic() - started), 0.05)
                probe_timeout = (min(probe_timeout[0], left), min(probe_timeout[1], left))
            try:
                status = requests.get(url, timeout=probe_timeout).status_code
                problem = f"HTTP {status}"
            except requests.exceptions.RequestException as exc:
                status, problem = 0, type(exc).__name__
            if status == 200:
                log.info("model server is ready at %s", url)
                return
            now = time.monotonic()
            if timeout and now - started >= timeout:
                raise ModelServerUnavailable(
                    f"model server at {url} not ready after {timeout:g} s (last: {problem})"
                )
            if now - last_log >= log_every:
                log.info(
                    "still waiting for model server at %s (%s, %.0f s so far)",
                    url,
                    problem,
                    now - started,
                )
                last_log = now
            sleep(interval)
