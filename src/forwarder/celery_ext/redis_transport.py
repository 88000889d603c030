"""kombu's Redis transport: atomic batched takes, acks that survive restarts, prompt wake-ups.

Consumption (``redis_take``) and acknowledgements (``redis_qos``) are in their own modules.

A worker without an event loop (the gevent pool) consumes through ``drain_events(timeout=2)``.
While every prefetch slot is taken no take is pending, so nothing wakes that wait when a
task finishes: the worker sat idle for up to 2 s each time it was saturated (64 tasks of 0.5 s on
16 greenlets took 6.7 s instead of 2 s), and polling for a free slot instead costs CPU for as
long as the slots stay taken (10% of a core at a 2 ms poll). Here every ack or reject sets an
event that the saturated consumer waits on, so it resumes the moment a slot frees and spends
nothing while none does; once the worker is shutting down, a drain takes nothing (``stopping``).
The prefork pool's event loop does not use ``drain_events``.

kombu sweeps the unacknowledged messages of dead consumers back into their queue (once their
visibility timeout has passed) from the event loop's timer, or from ``drain_events`` only when a
poll finds nothing at all; but an idle wait times out with a reply every second, so a gevent
worker never swept and a task whose worker died stayed unacknowledged until a prefork worker
came. Here ``drain_events`` sweeps on the event loop's schedule (kombu scans every tenth call).

kombu also builds a redis client object for each received message and each ack; here a channel
keeps one per connection pool.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.transport import redis

from forwarder.celery_ext.redis_qos import QoS, settle_orphans
from forwarder.celery_ext.redis_take import TakingChannel
from forwarder.celery_ext.stopping import worker_stopping

__all__ = ["Transport"]

log = logging.getLogger(__name__)

# Seconds a drain waits, taking nothing, once the worker is shutting down.
STOPPING_WAIT = 0.1


class Channel(TakingChannel):
    QoS = QoS
    _shared: tuple[Any, Any] | None = None  # (pool, client)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connparams(asynchronous=False)  # kept while the channel can still read them

    def _connparams(self, asynchronous: bool = False) -> Any:
        # kombu reads them from the kombu connection, which a reconnect detaches from this
        # channel's transport, while Celery still acks this channel's messages and kombu
        # restores them on close: "'NoneType' object has no attribute 'hostname'" stopped a
        # prefork worker for good at a Redis restart. Kept from the first call, the channel can
        # reach Redis again once it is back.
        kept: dict[bool, Any] = self.__dict__.setdefault("_kept_connparams", {})
        if asynchronous not in kept:
            kept[asynchronous] = super()._connparams(asynchronous=asynchronous)
        return dict(kept[asynchronous])

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # kombu builds a redis client for every received message and every ack; building one
        # was about 6% of a gevent worker's CPU per task. A client takes a pooled connection per
        # command, so one per pool serves every greenlet and thread.
        pool = self.pool
        if self._shared is None or self._shared[0] is not pool:
            self._shared = (pool, super()._create_client())
        return self._shared[1]

    def slot_freed(self) -> None:
        transport = self.connection  # None once the channel is closed
        if transport is not None:
            transport.slot_freed.set()


class Poller(redis.MultiChannelPoller):
    def maybe_restore_messages(self) -> None:
        for channel in list(self._channels):
            if channel.active_queues:
                try:
                    settle_orphans(channel._create_client())
                except channel.connection_errors:
                    log.debug("settling closed channels' acks: Redis is down", exc_info=True)
                break
        super().maybe_restore_messages()


class Transport(redis.Transport):
    Channel = Channel
    on_event_loop = False  # registered with Celery's event loop: the prefork pool's parent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # type: ignore[assignment]  # kombu declares a FairCycle
        # Built after gevent's patching (when it patches), so this is a greenlet-aware event.
        self.slot_freed = threading.Event()
        self._next_sweep = 0.0

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.on_event_loop = True
        super().register_with_event_loop(connection, loop)

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self._maybe_sweep()
        self.slot_freed.clear()
        if worker_stopping():
            # Waited, not returned at once: the pidbox's loop drains too until the consumer stops
            # it, and a drain returning at once made it spin, starving every other greenlet.
            self.slot_freed.wait(STOPPING_WAIT)
            raise TimeoutError()
        if self._saturated():
            self.slot_freed.wait(timeout)
            raise TimeoutError()  # back to the consumer's loop, which checks for a shutdown
        return super().drain_events(connection, timeout=timeout, **kwargs)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        # The transport's own list of its open channels: the ones its poller polls.
        channels = list(self.channels)
        if now < self._next_sweep or not channels:
            return
        self._next_sweep = now + min(ch.unacked_restore_interval for ch in channels)
        # Redis's cycle is a MultiChannelPoller, not the FairCycle kombu's base class declares.
        poller: Any = self.cycle
        poller.maybe_restore_messages()

    def _saturated(self) -> bool:
        return any(ch.active_queues and not ch.qos.can_consume() for ch in list(self.channels))
