"""The gateway's part of the settings: where it listens, what it accepts, and its defaults.

They come from the config file's top-level ``gateway`` section (``--set gateway.port=8080``
applies), the environment (``FORWARDER_GATEWAY_HOST``, ``FORWARDER_GATEWAY_PORT``,
``FORWARDER_GATEWAY_TOKENS``: comma-separated) and the ``gateway`` command's ``--host`` and
``--port``; each wins over the one before (``forwarder.config.schema`` lists them). Tokens are
never shown: not in a ``repr``, an error or ``check-config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GatewaySettings"]


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
