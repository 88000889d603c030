"""The callback's HTTP client: requests over connections that check where they connect, with a deadline.

``callback_session(policy)`` is a requests session whose connections resolve the host once,
check every address it resolves to against the ``UrlPolicy`` (``CallbackRefused`` otherwise) and
connect to a checked address; the Host header and TLS's server name stay the URL's host. What is
checked is what is connected to, so a DNS answer that changes between a check and the connection
(a rebinding) changes nothing. Proxy variables are not used: through a proxy, the address
connected to would be the proxy's and the check would mean nothing.

``attempt_deadline(seconds)`` bounds everything one request does inside it, the connection, the
TLS handshake, sending and every read of the reply, by one total deadline: when it passes, each
connection the attempt used is shut down, so a receiver that sends a byte every few seconds
(never tripping a per-read timeout) cannot hold the call. A shutdown, not a close, so that the
socket's owner still closes it once; through a duplicate of the socket, since the TLS layer
takes the original over during the handshake.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import Timeout

from forwarder.errors import CallbackRefused
from forwarder.hooks.url_policy import UrlPolicy

__all__ = ["AttemptDeadline", "CheckedAdapter", "attempt_deadline", "callback_session"]

# Receivers are few (one default and the URLs requests name); a gevent worker may call one receiver
# from many greenlets at once, and each keeps its own connection.
_POOL_HOSTS = 16
_POOL_PER_HOST = 32

# Set by the adapter for the duration of one send, read by the connections it opens. Context
# variables are per thread and per greenlet.
_POLICY: ContextVar[UrlPolicy | None] = ContextVar("forwarder_callback_policy", default=None)
_DEADLINE: ContextVar[AttemptDeadline | None] = ContextVar(
    "forwarder_callback_deadline", default=None
)


class AttemptDeadline:
    """One attempt's deadline: when it passes, every connection the attempt used is shut down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._done = False
        self._connections: list[_Checked] = []
        self._lock = threading.Lock()
        # Under gevent, threading is patched and the timer is a greenlet.
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(self.ends - time.monotonic(), 0.0)

    def watch(self, connection: _Checked) -> None:
        with self._lock:
            if self.expired and not self._done:
                connection.cut()
            elif connection not in self._connections:
                self._connections.append(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                connection.cut()

    def _start(self) -> None:
        self._timer.start()

    def _stop(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


@contextlib.contextmanager
def attempt_deadline(seconds: float) -> Iterator[AttemptDeadline]:
    """Every connection a ``callback_session`` uses inside this block is cut at ``seconds``."""
    deadline = AttemptDeadline(seconds)
    token = _DEADLINE.set(deadline)
    deadline._start()
    try:
        yield deadline
    finally:
        deadline._stop()
        _DEADLINE.reset(token)


class _Checked(HTTPConnection):
    """A connection to a checked address, that its attempt's deadline can cut."""

    _handle: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        # urllib3's hook for making the socket; the rest of the connection (TLS included) is its own.
        policy = _POLICY.get()
        if policy is None:
            raise CallbackRefused("a callback connection was opened outside a callback request")
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        policy.check_addresses(self.host, self.port, [str(info[4][0]) for info in found])
        deadline = _DEADLINE.get()
        timeout = Timeout.resolve_default_timeout(self.timeout)
        if deadline is not None:
            timeout = min(deadline.remaining(), timeout) if timeout else deadline.remaining()
        sock = self._connect(found, timeout, deadline)
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def _connect(
        self, found: list[Any], timeout: float | None, deadline: AttemptDeadline | None
    ) -> socket.socket:
        problem: OSError | None = None
        for family, kind, proto, _, address in found:
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                self._keep_handle(sock.dup())
                if deadline is not None:
                    deadline.watch(self)
                sock.connect(address)
            except TimeoutError as exc:
                sock.close()
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={timeout})"
                ) from exc
            except OSError as exc:
                sock.close()
                problem = exc
                continue
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {problem}")

    def _keep_handle(self, handle: socket.socket | None) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = handle

    def cut(self) -> None:
        """Shut the connection down: whatever waits on it (a read, a handshake) ends at once."""
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.shutdown(socket.SHUT_RDWR)

    def request(self, *args: Any, **kwargs: Any) -> None:
        # A connection taken again from the pool joins the attempt that now uses it.
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.watch(self)
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._keep_handle(None)


class _CheckedHTTPS(_Checked, HTTPSConnection):
    pass


class _CheckedPool(HTTPConnectionPool):
    ConnectionCls = _Checked


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPS


class CheckedAdapter(HTTPAdapter):
    """requests' adapter over checked connections, never through a proxy."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        super().__init__(pool_connections=_POOL_HOSTS, pool_maxsize=_POOL_PER_HOST, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedPool, "https": _CheckedHTTPSPool}

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        token = _POLICY.set(self.policy)
        try:
            return super().send(request, stream, timeout, verify, cert, proxies=None)
        finally:
            _POLICY.reset(token)


def callback_session(policy: UrlPolicy) -> requests.Session:
    """A session whose every connection is checked against ``policy`` before it is made."""
    session = requests.Session()
    adapter = CheckedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
