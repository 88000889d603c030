"""Every private name of Celery, kombu and billiard the forwarder uses, and why, in one table.

Private names change without notice between minor versions, which is why the pins in
pyproject.toml stop at the next minor version. ``tests/unit/test_celery_internals.py`` checks each
entry against the installed versions (that it exists and, for a method, that it still takes the
parameters the code passes or overrides), so an upgrade that breaks one fails in seconds with a
message naming it, instead of a worker misbehaving at run time. A new use of a private name goes
here first; nothing outside ``forwarder.celery_ext`` uses one.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["INTERNALS", "Internal", "problem"]


@dataclass(frozen=True)
class Internal:
    """One private name: where it lives, what it must look like, and what relies on it."""

    owner: str  # "package.module:Class"
    name: str
    why: str  # what in celery_ext relies on it
    # A method's parameter names, self first; None for an attribute.
    parameters: tuple[str, ...] | None = None
    # Set in the owner's __init__: looked for on an instance rather than on the class.
    on_instance: bool = False

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"

    def owner_class(self) -> Any:
        module, _, qualname = self.owner.partition(":")
        return getattr(importlib.import_module(module), qualname)


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "celery.backends.base:Backend",
        "_ensure_retryable",
        "backends.base: a delivery's admission is retried by the backend's own retry policy",
        ("self", "func", "args", "fallback_exc", "fallback_msg", "max_retries", "kwargs"),
    ),
    Internal(
        "celery.backends.base:Backend",
        "_get_result_meta",
        "backends.redis and backends.base: the meta a store writes, encoded once for the store"
        " and admit scripts, and for the compare-and-set of STARTED and CANCELED",
        ("self", "result", "state", "traceback", "request", "format_date", "encode"),
    ),
    Internal(
        "celery.backends.redis:RedisBackend",
        "_store_result",
        "backends.redis overrides it: each store is one script (read, check, write, publish)",
        ("self", "task_id", "result", "state", "traceback", "request", "kwargs"),
    ),
    Internal(
        "celery.backends.redis:RedisBackend",
        "_MAX_STR_VALUE_SIZE",
        "backends.redis: refuses a result Redis would refuse, as Celery's own store does",
    ),
    Internal(
        "celery.concurrency.asynpool:AsynPool",
        "_event_process_exit",
        "prefork overrides it: an exited child is reaped and replaced again shortly after",
        ("self", "hub", "proc"),
    ),
    Internal(
        "billiard.pool:ApplyResult",
        "_accepted",
        "prefork: whether a child has acknowledged a job, as Celery's flush reads it",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:ApplyResult",
        "_write_to",
        "prefork: the child a job was written to, kept through a flush since it runs there",
    ),
    Internal(
        "billiard.process:BaseProcess",
        "_is_alive",
        "prefork: a job written to a child that has exited is Celery's to drop, not kept",
        ("self",),
    ),
    Internal(
        "celery.concurrency.prefork:TaskPool",
        "_pool",
        "prefork: the billiard pool behind Celery's, to drop a job never sent to a child",
    ),
    Internal(
        "billiard.pool:Pool",
        "_cache",
        "prefork: the pool's jobs, to find the one whose arguments could not be pickled, and to"
        " keep through a flush the ones written to a child",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:Pool",
        "_putlock",
        "prefork: the pool's slot semaphore, released for that job as billiard does on a result",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:Pool",
        "_setup_queues",
        "prefork overrides it: the blocking pool's job pipe is one an idle child waits on unlocked",
        ("self",),
    ),
    Internal(
        "billiard.pool:Pool",
        "_inqueue",
        "prefork: the blocking pool's job pipe, replaced before any child is started",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:Pool",
        "_quick_put",
        "prefork: how the pool's task thread writes a job, pointed at the replacement pipe",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:Pool",
        "_ctx",
        "prefork: the pool's process context, which makes the replacement pipe's lock",
        on_instance=True,
    ),
    Internal(
        "billiard.pool:Worker",
        "_make_recv_method",
        "prefork: a child polls the job pipe unlocked, then calls get(), when it has no get_payload",
        ("self", "conn"),
    ),
    Internal(
        "billiard.queues:SimpleQueue",
        "_rlock",
        "prefork: the job pipe's read lock, held only to read a job already in the pipe",
        on_instance=True,
    ),
    Internal(
        "billiard.queues:SimpleQueue",
        "_reader",
        "prefork: the job pipe's reading end, polled before and under that lock",
        on_instance=True,
    ),
    Internal(
        "billiard.queues:SimpleQueue",
        "_writer",
        "prefork: the job pipe's writing end, where the pool's task thread sends each job",
        on_instance=True,
    ),
    Internal(
        "kombu.transport.filesystem:Channel",
        "_put",
        "filesystem_transport overrides it: a message is written aside and renamed into place",
        ("self", "queue", "payload", "kwargs"),
    ),
    Internal(
        "kombu.transport.filesystem:Channel",
        "_queue_bind",
        "filesystem_transport overrides it: the exchange's binding file is made 0600",
        ("self", "exchange", "routing_key", "pattern", "queue"),
    ),
    Internal(
        "kombu.transport.filesystem:Channel",
        "_exchange_file",
        "filesystem_transport: the binding file _queue_bind wrote, to make it 0600",
        ("self", "exchange"),
    ),
    Internal(
        "celery.backends.filesystem:FilesystemBackend",
        "_filename",
        "backends.filesystem: a key's file, written whole under a temporary name and renamed",
        ("self", "key"),
    ),
    Internal(
        "kombu.transport.filesystem:Channel",
        "_get",
        "filesystem_transport overrides it: a message is read only once it is there whole",
        ("self", "queue"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_create_client",
        "redis_transport overrides it: one redis client per connection pool, not per message",
        ("self", "asynchronous"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_connparams",
        "redis_transport overrides it: kept, so a closed channel can still ack and restore",
        ("self", "asynchronous"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_brpop_start",
        "redis_take overrides it: sends the take script, or the wait when a take found nothing",
        ("self", "timeout"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_brpop_read",
        "redis_take overrides it: reads the take's reply and delivers every message in it",
        ("self", "options"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_flush_brpop_reauth",
        "redis_take: called once a reply is read, as kombu's BRPOP read does",
        ("self",),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_q_for_pri",
        "redis_take: the list of each queue and priority, in kombu's order",
        ("self", "queue", "pri"),
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_in_poll",
        "redis_take and redis_qos: the polled connection while a reply is awaited",
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_brpop_sent_at",
        "redis_take: when the awaited command was sent, for kombu's health check",
    ),
    Internal(
        "kombu.transport.redis:Channel",
        "_closing",
        "redis_qos: a closing channel sends no more takes, so its acks are written at once",
    ),
    Internal(
        "kombu.transport.virtual.base:Transport",
        "_deliver",
        "redis_take: each taken message is delivered as kombu delivers a BRPOP reply",
        ("self", "message", "queue"),
    ),
    Internal(
        "kombu.transport.virtual.base:QoS",
        "_delivered",
        "redis_qos: the delivered, unacknowledged messages, dropped on ack, stranded on close",
        on_instance=True,
    ),
    Internal(
        "kombu.transport.redis:MultiChannelPoller",
        "_channels",
        "redis_transport: the poller's open channels, one of which settles closed channels' acks",
        on_instance=True,
    ),
)


def problem(internal: Internal, instance: object | None = None) -> str | None:
    """What no longer matches ``internal`` in the installed version, or None when all does.

    An ``on_instance`` entry is looked for on ``instance`` (one of its owner, built by the caller).
    """
    where = instance if internal.on_instance else internal.owner_class()
    if where is None:
        return f"{internal.label}: no instance to look on"
    if not hasattr(where, internal.name):
        return f"{internal.label} is gone; it was used for: {internal.why}"
    if internal.parameters is None:
        return None
    found = tuple(inspect.signature(getattr(where, internal.name)).parameters)
    if found != internal.parameters:
        return (
            f"{internal.label} now takes {found}, not {internal.parameters}; "
            f"it is used for: {internal.why}"
        )
    return None
