"""The file sink: one JSON line per record, appended to a local file.

For the embedded default and the demo. Each record is one ``write`` on a file opened with
``O_APPEND``, so the prefork children (each with its own descriptor, opened after the fork) and
the greenlets of a gevent worker never interleave their lines.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forwarder.hooks.sinks.base import Sink
from forwarder.observability.metrics import recorder
from forwarder.process_local import ProcessLocal

__all__ = ["FileSink"]


class FileSink(Sink):
    name = "file"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd = ProcessLocal(self._open)
        # A close never lands between a put's look-up of the descriptor and its write.
        self._lock = threading.Lock()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def put(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"
        with self._lock:
            os.write(self._fd.get(), line)
        self.counts.sent += 1
        recorder().sink_records(self.name, "sent", 1)

    def close(self) -> None:
        with self._lock:
            fd = self._fd.take()
            if fd is not None:
                os.close(fd)
