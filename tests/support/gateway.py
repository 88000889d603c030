"""A gateway as a test starts it: ``python -m forwarder gateway``, and where it listens."""

from __future__ import annotations

import re
from dataclasses import dataclass

from forwarder.devtools.localrun import Child

__all__ = ["GATEWAY_RE", "Gateway"]

GATEWAY_RE = re.compile(r"gateway listening on (http://127\.0\.0\.1:\d+)")


@dataclass
class Gateway:
    """``python -m forwarder gateway`` on a free port of 127.0.0.1; ``url`` is where it listens."""

    child: Child
    url: str
    args: list[str]
