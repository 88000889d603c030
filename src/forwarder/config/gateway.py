"""The gateway's part of the settings: where it listens, what it accepts, and its defaults.

They come from the config file's top-level ``gateway`` section (``--set gateway.port=8080``
applies), the environment (``FORWARDER_GATEWAY_HOST``, ``FORWARDER_GATEWAY_PORT``,
``FORWARDER_GATEWAY_TOKENS`` and ``FORWARDER_GATEWAY_TRUSTED_HOSTS``: comma-separated, and
others ``forwarder.config.schema`` lists) and the ``gateway`` command's ``--host``, ``--port``
and ``--allow-anonymous``; each wins over the one before. Tokens are never shown: not in a
``repr``, an error or ``check-config``.

docs/security.md says what each of the edge's limits defends against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ROUTE_ACCESS", "GatewaySettings"]

# Who may read /docs, /openapi.json and /metrics: anyone, a token holder, or no one (not
# served). Not "off": YAML reads that as false.
ROUTE_ACCESS = ("public", "token", "disabled")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (logged once listening)
    max_body_bytes: int = 1_048_576
    # Empty: no authentication. Otherwise every /v1 route needs one of these as a bearer token.
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    # None: no limit. A request's own ttl_seconds / timeout_seconds wins over these.
    default_ttl_seconds: float | None = None
    default_timeout_seconds: float | None = None
    idempotency_retention_seconds: float = 86400.0
    # A claimed key whose task was not sent within this long (its claimer died) is sent again.
    idempotency_lease_seconds: float = 30.0
    # Without tokens, a host other than loopback is refused unless this is set.
    allow_anonymous: bool = False
    # Host header names (or *.suffix) accepted; empty: any.
    trusted_hosts: tuple[str, ...] = ()
    # Past this many connections or requests at once, requests are answered 503.
    max_connections: int = 1000
    # A request's headers must arrive within this long, its body within this long after them.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    # A FAILURE's stack trace in ``traceback`` (else the error's type and message).
    expose_tracebacks: bool = False
    docs_access: str = "public"
    metrics_access: str = "public"
    # None: /metrics on the gateway's own port; else on this port of metrics_host only.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
