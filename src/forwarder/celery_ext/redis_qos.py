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

import json
import threading
import time
from typing import Any

from kombu.transport import redis, virtual

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
        self._lost_takes: list[tuple[str, int]] = []  # (taken record, take number)

    def append(self, message: Any, delivery_tag: Any) -> None:
        if getattr(self.channel, "recording", False):
            virtual.QoS.append(self, message, delivery_tag)  # take.lua has recorded it
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        self._delivered.pop(delivery_tag, None)
        self._stranded.pop(delivery_tag, None)
        self._pending_acks.add(delivery_tag)
        if not self._take_comes(self.channel):
            self.flush_acks()
        self.channel.slot_freed()

    @staticmethod
    def _take_comes(channel: Any) -> bool:
        """Whether the channel's next command is a take, which carries the pending acks."""
        return bool(
            getattr(channel, "taken_key", None)
            and not channel.closed
            and not channel._closing
            and not channel._in_poll
            and not channel.global_keyprefix
            and channel.active_queues
        )

    def take_pending_acks(self) -> list[str]:
        acks, self._pending_acks = list(self._pending_acks), set()
        return acks

    def requeue_acks(self, acks: list[str]) -> None:
        self._pending_acks.update(acks)

    def take_lost(self, acks: list[str], taken_key: str, number: int) -> None:
        """A take's reply was lost: its acks are sent again, its messages put back."""
        self.requeue_acks(acks)
        self._lost_takes.append((taken_key, number))
        _orphan(self)

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

    def recover_lost_takes(self, client: Any = None) -> None:
        """Strand the messages of each lost take that Redis recorded (its number matches)."""
        with self.channel.conn_or_acquire(client) as conn:
            while self._lost_takes:
                key, number = self._lost_takes[0]
                raw = conn.get(key)
                tags = json.loads(raw) if raw else []
                if tags and str(tags[0]) == str(number):
                    self._stranded.update(dict.fromkeys(tags[1:], 0.0))
                conn.delete(key)
                self._lost_takes.pop(0)

    def restore_stranded(self, client: Any = None, grace: float = STRAND_GRACE) -> None:
        """Put back the stranded messages older than ``grace`` s (kombu's restore_by_tag)."""
        ceiling = time.monotonic() - grace
        for tag, since in list(self._stranded.items()):
            if since <= ceiling:
                self.restore_by_tag(tag, client=client)
                self._stranded.pop(tag, None)

    @property
    def unsettled(self) -> bool:
        return bool(self._pending_acks or self._stranded or self._lost_takes)


def _orphan(qos: QoS) -> None:
    with _orphans_lock:
        _orphans.add(qos)


def settle_orphans(client: Any) -> None:
    """Retry, through ``client`` (a live channel's), what closed channels left undone."""
    with _orphans_lock:
        orphans = list(_orphans)
    for qos in orphans:
        qos.flush_acks(client)
        qos.recover_lost_takes(client)
        qos.restore_stranded(client)
        if not qos.unsettled:
            with _orphans_lock:
                _orphans.discard(qos)
