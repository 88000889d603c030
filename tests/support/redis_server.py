"""One redis-server for the whole session, and a fresh database of it for each test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from forwarder.devtools.localrun import HOST, find_redis_server, start_redis
from support.servers import running, server_missing

__all__ = [
    "REDIS_DATABASES",
    "RedisServer",
    "module_redis_url",
    "redis_server",
    "redis_url",
    "stored_meta",
]

REDIS_DATABASES = 64


class RedisServer:
    """The session's redis-server; hands out each database to one live fixture at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._in_use: set[int] = set()

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """The URL of a fresh (flushed) database that no live fixture is using, until exit."""
        db = next((n for n in range(REDIS_DATABASES) if n not in self._in_use), None)
        if db is None:
            raise RuntimeError("no free redis database")
        self._in_use.add(db)
        try:
            with redis.Redis(host=HOST, port=self.port, db=db, socket_timeout=5) as conn:
                conn.flushdb()
            yield self.url(db)
        finally:
            self._in_use.discard(db)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1; skipped where it is not installed (an error when CI is set)."""
    if find_redis_server() is None:
        server_missing(
            "redis-server not found ($REDIS_SERVER, PATH or /usr/bin/redis-server); "
            "install it with: apt-get install redis-server"
        )
    folder = tmp_path_factory.mktemp("redis")
    with running(
        "redis-server", lambda: start_redis(folder, "--databases", str(REDIS_DATABASES), timeout=10)
    ) as port:
        yield RedisServer(port)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A fresh, empty Redis database for this test (broker and result backend)."""
    with redis_server.database() as url:
        yield url


@pytest.fixture(scope="module")
def module_redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A fresh, empty Redis database shared by a module's tests."""
    with redis_server.database() as url:
        yield url


def stored_meta(url: str, task_id: str) -> dict[str, Any] | None:
    """The raw JSON Celery stored for the task, read straight from Redis."""
    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        raw = conn.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))
