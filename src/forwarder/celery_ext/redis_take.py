"""Consumption for kombu's Redis channel: taken and recorded in one step, as many as slots are free.

kombu pops one message per round trip (BRPOP), then records it as unacknowledged in a second
command: Redis dying between the two lost the message, and every task paid two round trips for
it. Here ``lua/take.lua`` writes the pending acks, pops up to as many messages as the consumer has
free prefetch slots (never more, so another replica still gets work) and records each exactly
as kombu does, atomically, in one round trip on the connection kombu polls.

A process with CPU to spare takes one message at a time. When the model is slow, the tasks of one
take finish together, their acks land in one turn of the event loop, and a take of every free slot
starts them together again: a gevent worker went on in lock step, waiting on the model with every
slot taken and then spending a burst of CPU with none in flight, and gave 63% of the tasks/s its
slots allow on a 50 ms model. Taken one by one, the tasks spread over the model's latency. A busy
process (``BUSY`` of a core over the last ``BUSY_WINDOW`` seconds) is short of CPU, not of tasks in
flight: it takes as many as slots are free, which costs the fewest round trips per task.
A channel on an event loop (the prefork pool's parent) does the same: its tasks run in the
children, so its own CPU says nothing of theirs.

A script cannot block, so when a take finds nothing the channel waits with
``BLMOVE queue queue RIGHT RIGHT``: it returns once the first queue has a message and leaves it
where it was, then the next take fetches it. The other queues and priority lists are taken from
whenever the wait times out (kombu's ``brpop_timeout``, 1 s).

A take whose reply is lost with the connection has recorded messages no one received. Each take
also writes the delivery tags it took to this channel's record (``TAKEN_KEY_PREFIX``); the
channel's QoS puts back, once Redis answers again, those of the take that was lost.

Not used with ``global_keyprefix`` (kombu prefixes only a script's first key): kombu's BRPOP.
"""

from __future__ import annotations

import json
import time
import uuid
from importlib import resources
from queue import Empty
from typing import Any

from kombu.transport import redis
from kombu.utils.json import loads

from forwarder.protocol import TAKEN_KEY_PREFIX

__all__ = ["TAKE", "TakingChannel"]

TAKE = (resources.files("forwarder.celery_ext") / "lua" / "take.lua").read_text()
RECORD_MS = 24 * 3600 * 1000
BUSY = 0.9
BUSY_WINDOW = 0.2


class TakingChannel(redis.Channel):
    """kombu's Redis channel consuming through ``take.lua``."""

    _in_poll: Any = False  # kombu's: the polled connection while a reply is awaited
    _brpop_sent_at: Any = None  # kombu's: when the awaited command was sent
    _sent: str | None = None  # the command whose reply is awaited on the polled connection
    _waiting = False  # the last take found nothing: wait for the first queue next
    _take_sha: str | None = None
    _take_number = 0
    _recording = False  # delivering taken messages: already recorded as unacknowledged
    _busy = False  # this process used BUSY of a core over the last window

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken_key = f"{TAKEN_KEY_PREFIX}{uuid.uuid4().hex}"
        self._acks_sent: list[str] = []
        self._window = (time.monotonic(), time.process_time())  # when the window began

    def basic_cancel(self, consumer_tag: Any) -> Any:
        # No take follows the last cancel (a warm shutdown): the acks waiting for one go now.
        ret = super().basic_cancel(consumer_tag)
        self.qos.flush_acks()
        return ret

    def close(self) -> None:
        # Before kombu restores what is still unacknowledged: a task whose result was stored
        # and ack made must not come back to the next worker.
        if not self.closed:
            self.qos.flush_acks()
        super().close()

    @property
    def recording(self) -> bool:
        return self._recording

    def _take_size(self) -> int:
        """The free slots when this process is busy or on an event loop, else one."""
        free = self.qos.can_consume_max_estimate() or 1
        if getattr(self.connection, "on_event_loop", False):
            return free
        now = time.monotonic()
        began, cpu_then = self._window
        if now - began >= BUSY_WINDOW:
            cpu = time.process_time()
            self._busy = (cpu - cpu_then) >= BUSY * (now - began)
            self._window = (now, cpu)
        return free if self._busy else 1

    def _brpop_start(self, timeout: Any = None) -> None:
        if self.global_keyprefix:
            super()._brpop_start(timeout)
            return
        queues = self.active_queues
        if not queues:
            self.qos.flush_acks()
            return
        if self._take_sha is None:
            self._take_sha = self._create_client().script_load(TAKE)
        if self._waiting:
            first = self._q_for_pri(queues[0], self.priority_steps[0])
            wait = self.brpop_timeout if timeout is None else timeout
            self._send("BLMOVE", first, first, "RIGHT", "RIGHT", wait or 0)
            return
        self._take_number += 1
        start = self._take_number % len(queues)  # each queue first in turn, as kombu's cycle
        queues = queues[start:] + queues[:start]
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        self._acks_sent = self.qos.take_pending_acks()
        self._send(
            "EVALSHA",
            self._take_sha,
            len(keys) + 3,
            self.unacked_index_key,
            self.unacked_key,
            self.taken_key,
            *keys,
            self._take_size(),
            time.time(),
            self._take_number,
            RECORD_MS,
            *self._acks_sent,
        )

    def _send(self, *command: Any) -> None:
        self._sent = command[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> Any:
        sent, self._sent = self._sent, None
        if sent is None:
            return super()._brpop_read(**options)
        try:
            reply = self._read_reply(sent, **options)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if sent == "BLMOVE":
            self._waiting = False
            raise Empty()
        self._waiting = not reply
        if not reply:
            raise Empty()
        self._deliver_taken(reply)
        return True

    def _read_reply(self, sent: str, **options: Any) -> Any:
        try:
            return self.client.parse_response(self.client.connection, sent, **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            if sent == "EVALSHA":
                self.qos.take_lost(self._acks_sent, self.taken_key, self._take_number)
            raise
        except self.ResponseError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            self._take_sha = None  # Redis restarted without its script cache: load it again
            self.qos.requeue_acks(self._acks_sent)
            raise Empty() from None

    def _deliver_taken(self, reply: list[bytes]) -> None:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
        self._recording = True
        try:
            while pairs:
                key, raw = pairs.pop(0)
                queue = key.decode().rsplit(self.sep, 1)[0]
                self.connection._deliver(loads(raw), queue)
        finally:
            self._recording = False
            for tag in filter(None, (_tag(raw) for _, raw in pairs)):
                self.qos.restore_by_tag(tag)  # a delivery raised: the rest go back now


def _tag(raw: bytes) -> str | None:
    try:
        tag = json.loads(raw)["properties"]["delivery_tag"]
    except (ValueError, KeyError, TypeError):
        return None
    return tag if isinstance(tag, str) else None
