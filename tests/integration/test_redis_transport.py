"""The forwarder's kombu Redis transport against a real redis-server, below Celery."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from forwarder.celery_ext.redis_transport import Transport

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url, transport=Transport) as conn:
        yield conn


def test_a_message_acked_after_its_connection_closed_does_not_stop_the_consumer(
    connection: Connection, redis_url: str
) -> None:
    """Celery acks a task that finishes after a reconnect closed the channel it came on."""
    queue = Queue("closed", channel=connection.default_channel)
    queue.declare()
    connection.default_channel.basic_publish(
        connection.default_channel.prepare_message("body"), exchange="", routing_key="closed"
    )
    message = queue.get(no_ack=False)
    assert message is not None
    connection.release()  # puts the unacknowledged message back, as kombu does on close

    message.ack()  # was: AttributeError: 'NoneType' object has no attribute 'client'

    with redis.Redis.from_url(redis_url) as conn:
        assert conn.hlen("unacked") == 0
        assert conn.zcard("unacked_index") == 0
        assert conn.llen("closed") == 1


def _publish(connection: Connection, queue: str, count: int) -> Queue:
    declared = Queue(queue, channel=connection.default_channel)
    declared.declare()
    channel = connection.default_channel
    for n in range(count):
        channel.basic_publish(channel.prepare_message(f"m{n}"), exchange="", routing_key=queue)
    return declared


def _drain(connection: Connection, received: list[Message], count: int) -> None:
    """Until ``count`` messages came (an idle consumer takes them one by one), at most 5 s."""
    deadline = time.monotonic() + 5
    while len(received) < count and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=1)


def test_takes_fetch_only_free_slots_and_record_them_as_kombu_does(
    connection: Connection, redis_url: str
) -> None:
    queue = _publish(connection, "take", 6)
    received: list[Message] = []
    channel = connection.default_channel
    channel.basic_qos(0, 4, False)
    with Consumer(channel, [queue], callbacks=[lambda _body, message: received.append(message)]):
        _drain(connection, received, 4)
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.5)  # every slot is taken: no take is made
        assert len(received) == 4  # the free slots, not the 6 queued
        with redis.Redis.from_url(redis_url) as conn:
            assert conn.llen("take") == 2
            records = {
                tag.decode(): json.loads(raw) for tag, raw in conn.hgetall("unacked").items()
            }
            assert sorted(records) == sorted(m.delivery_tag for m in received)
            assert set(conn.zrange("unacked_index", 0, -1)) == {t.encode() for t in records}
            for message in received:
                payload, exchange, routing_key = records[message.delivery_tag]
                assert (payload, exchange, routing_key) == (message._raw, "", "take")
        # kombu's own restore (as another worker's sweep would run it) reads the record.
        with Connection(redis_url) as plain:
            plain.default_channel.qos.restore_by_tag(received[0].delivery_tag)
        for message in received[1:]:
            message.ack()
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=2)  # the next take carries the acks
    with redis.Redis.from_url(redis_url) as conn:
        assert conn.hlen("unacked") == conn.zcard("unacked_index") == len(received) - 4


def test_acks_waiting_for_the_next_take_are_written_before_the_channel_closes(
    connection: Connection, redis_url: str
) -> None:
    """A warm shutdown: the tasks finished and acked, no take follows, the channel closes."""
    queue = _publish(connection, "shutdown", 3)
    received: list[Message] = []
    channel = connection.default_channel
    channel.basic_qos(0, 3, False)
    with Consumer(channel, [queue], callbacks=[lambda _body, message: received.append(message)]):
        _drain(connection, received, 3)
        assert len(received) == 3
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.5)  # its take finds nothing: nothing is in flight
        for message in received:
            message.ack()
    connection.release()
    with redis.Redis.from_url(redis_url) as conn:
        assert conn.hlen("unacked") == conn.zcard("unacked_index") == 0
        assert conn.llen("shutdown") == 0  # none put back for the next worker
