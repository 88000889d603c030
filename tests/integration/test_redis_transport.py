"""The forwarder's kombu Redis transport against a real redis-server, below Celery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Queue

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
