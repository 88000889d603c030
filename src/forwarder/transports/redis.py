"""kombu's Redis transport, waking a saturated consumer as soon as a task frees its slot.

A worker without an event loop (the gevent pool) consumes through ``drain_events(timeout=2)``.
While every prefetch slot is taken kombu keeps no BRPOP pending, so nothing wakes that wait when a
task finishes: the worker sat idle for up to 2 s each time it was saturated (64 tasks of 0.5 s on
16 greenlets took 6.7 s instead of 2 s), and polling for a free slot instead costs CPU for as
long as the slots stay taken (10% of a core at a 2 ms poll). Here every ack or reject sets an
event that the saturated consumer waits on, so it resumes the moment a slot frees and spends
nothing while none does. The prefork pool's event loop does not use ``drain_events``.
"""

from __future__ import annotations

import threading
from typing import Any

from kombu.transport import redis

__all__ = ["Transport"]


class QoS(redis.QoS):
    def ack(self, delivery_tag: Any) -> None:
        super().ack(delivery_tag)
        self.channel.connection.slot_freed.set()

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue=requeue)
        self.channel.connection.slot_freed.set()


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built after gevent's patching (when it patches), so this is a greenlet-aware event.
        self.slot_freed = threading.Event()

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self.slot_freed.clear()
        if self._saturated():
            self.slot_freed.wait(timeout)
            # Back to the consumer's loop either way: it checks for a warm shutdown before it
            # reads again, so a slot freed after SIGTERM is not filled with a new task.
            raise TimeoutError()
        return super().drain_events(connection, timeout=timeout, **kwargs)

    def _saturated(self) -> bool:
        channels = getattr(self.cycle, "_channels", ())
        return any(ch.active_queues and not ch.qos.can_consume() for ch in channels)
