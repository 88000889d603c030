"""kombu's filesystem transport (the embedded broker), with messages that appear whole or not at all.

kombu creates a message's file under its final name and only then writes it, so a worker polling
the folder at that moment took the empty file, failed to decode it and stopped ("Unrecoverable
error: JSONDecodeError", found by the integration tests). Here a message is written under a name
no consumer reads and renamed into place, which is atomic within the folder. A consumer also
leaves an empty file where it is (a plain kombu producer may have just created it) and reads a
file only under a shared lock, which waits for a plain kombu producer still holding its exclusive
one while it writes.

kombu moves a message it takes into the system's temporary folder before reading it; here it is
renamed within the queue folder instead, so that a message (which may carry a callback's
credentials) never leaves the folder the operator chose. A message whose worker dies between the
rename and the read stays there under its ``.taken`` name: the embedded broker is at-most-once.
Messages and the exchanges' binding files are 0600, in folders made 0700. Once the worker is
shutting down, a drain takes nothing (``stopping``).
"""

from __future__ import annotations

import fcntl
import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.json import dumps, loads

from forwarder.celery_ext.stopping import StopsTaking

__all__ = ["Transport"]

# Written under this suffix, a message is no queue's: kombu matches ``<queue>.msg`` exactly.
WRITING_SUFFIX = ".writing"
TAKEN_SUFFIX = ".taken"
MESSAGE_MODE = 0o600


class Channel(StopsTaking, filesystem.Channel):
    # kombu's filesystem channel names the argument differently from its own base class.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # kombu's own naming, so that plain kombu consumers read these messages in the same order.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + WRITING_SUFFIX
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MESSAGE_MODE)
        with os.fdopen(descriptor, "wb") as out:
            out.write(dumps(payload).encode())
        os.rename(partial, final)

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        super()._queue_bind(exchange, routing_key, pattern, queue)
        # kombu writes the binding table with the process's umask (world-readable, mostly).
        os.chmod(self._exchange_file(exchange), MESSAGE_MODE)

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            path = os.path.join(self.data_folder_in, name)
            payload = _take(path)
            if payload is not None:
                return loads(payload.decode())
        raise Empty()


def _take(path: str) -> bytes | None:
    """The message at ``path``, taken off the queue; None if it is not there (yet) whole."""
    try:
        if os.stat(path).st_size == 0:
            return None  # a plain kombu producer has created it and not yet written it
        taken = path + TAKEN_SUFFIX
        os.rename(path, taken)  # only one consumer wins the rename
    except FileNotFoundError:
        return None  # another consumer took it first
    with open(taken, "rb") as message:
        fcntl.flock(message.fileno(), fcntl.LOCK_SH)
        payload = message.read()
    os.remove(taken)
    return payload


class Transport(filesystem.Transport):
    Channel = Channel
