"""Acknowledgements for kombu's Redis transport that survive the connection they were made on.

kombu removes an acknowledged message from the ``unacked`` hash and ``unacked_index`` sorted set
at once, and restores a channel's unacknowledged messages when the channel closes. When Redis dies,
both fail: an ack raised ("Couldn't ack") and left its message to be delivered again after the
visibility timeout, and the restore on close left every message the worker had reserved but not
started (Celery drops those on a connection loss) in the hash until that timeout too.

Here an ack that cannot reach Redis stays pending, and the messages a closed channel could not
put back stay stranded; the live channel of the process settles both once Redis answers again
(on kombu's restore schedule, every ``unacked_restore_interval``). A stranded message is put back
only after ``STRAND_GRACE`` seconds, so a task still running on it can ack it first.

Acks are written in batches: an ack made while another is on its way to Redis (other greenlets)
joins the next round trip instead of making its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kombu.transport import redis

__all__ = ["STRAND_GRACE", "QoS", "settle_orphans"]

STRAND_GRACE = 5.0

# Closed channels' QoS objects with acks or restores left to do.
_orphans: set[QoS] = set()
_orphans_lock = threading.Lock()


class QoS(redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_acks: set[str] = set()
        self._stranded: dict[str, float] = {}  # delivery tag -> when it could not be restored
        self._flushing = False

    def ack(self, delivery_tag: Any) -> None:
        self._delivered.pop(delivery_tag, None)
        self._stranded.pop(delivery_tag, None)
        self._pending_acks.add(delivery_tag)
        self.flush_acks()
        self.channel.slot_freed()

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if not requeue:
            self.ack(delivery_tag)
            return
        super().reject(delivery_tag, requeue=True)
        self.channel.slot_freed()

    def flush_acks(self, client: Any = None) -> bool:
        """Write every pending ack; True once none is left. Keeps them when Redis is down."""
        if self._flushing:
            return False  # the flush in progress takes the new ones in its next round
        self._flushing = True
        try:
            while self._pending_acks:
                batch, self._pending_acks = self._pending_acks, set()
                try:
                    self._remove(batch, client)
                except self.channel.connection_errors:
                    self._pending_acks |= batch
                    _orphan(self)
                    return False
            return True
        finally:
            self._flushing = False

    def _remove(self, tags: set[str], client: Any) -> None:
        with self.channel.conn_or_acquire(client) as conn:
            conn.pipeline(transaction=False).zrem(self.unacked_index_key, *tags).hdel(
                self.unacked_key, *tags
            ).execute()

    def restore_unacked(self, client: Any = None) -> None:
        # kombu calls this when the channel closes, often because Redis has just gone away.
        now = time.monotonic()
        self._stranded.update(dict.fromkeys(self._delivered, now))
        self._delivered.clear()
        try:
            self.restore_stranded(client, grace=0.0)
        except self.channel.connection_errors:
            _orphan(self)

    def restore_stranded(self, client: Any = None, grace: float = STRAND_GRACE) -> None:
        """Put back the stranded messages older than ``grace`` s (kombu's restore_by_tag)."""
        ceiling = time.monotonic() - grace
        for tag, since in list(self._stranded.items()):
            if since <= ceiling:
                self.restore_by_tag(tag, client=client)
                self._stranded.pop(tag, None)

    @property
    def unsettled(self) -> bool:
        return bool(self._pending_acks or self._stranded)


def _orphan(qos: QoS) -> None:
    with _orphans_lock:
        _orphans.add(qos)


def settle_orphans(client: Any) -> None:
    """Retry, through ``client`` (a live channel's), what closed channels left undone."""
    with _orphans_lock:
        orphans = list(_orphans)
    for qos in orphans:
        qos.flush_acks(client)
        qos.restore_stranded(client)
        if not qos.unsettled:
            with _orphans_lock:
                _orphans.discard(qos)
