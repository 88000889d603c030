"""Where the logging hook's records go: the interface every sink implements.

``put`` may buffer; ``flush`` sends what is buffered; ``close`` flushes and releases, once, when
the process stops (warm shutdown, or a prefork child being recycled). A sink counts what it
sent, what it had to send again and what it dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Sink", "SinkCounts"]


@dataclass
class SinkCounts:
    sent: int = 0
    retried: int = 0
    dropped: int = 0


class Sink:
    name: ClassVar[str]

    def __init__(self) -> None:
        self.counts = SinkCounts()

    def put(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Send whatever is buffered; a sink that does not buffer has nothing to do."""

    def close(self) -> None:
        self.flush()
