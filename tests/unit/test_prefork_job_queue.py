"""The blocking pool's job pipe, read the way billiard's child reads it (its real receive method).

An idle child must wait on the pipe without its lock, so that a child killed while idle leaves
the lock free for the others (tests/faults/test_pool_child_kill.py kills one for real).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import billiard
import pytest
from billiard.pool import Worker

from forwarder.celery_ext.prefork import NO_JOB, IdleSafeBlockingPool, IdleSafeJobQueue


@pytest.fixture
def queue() -> Iterator[IdleSafeJobQueue]:
    job_queue = IdleSafeJobQueue(ctx=billiard.get_context())
    try:
        yield job_queue
    finally:
        job_queue.close()


def receive(queue: IdleSafeJobQueue) -> Any:
    """What billiard's child calls to wait (``timeout`` seconds) for its next job."""
    return Worker._make_recv_method(None, queue)


def test_an_idle_child_waits_without_holding_the_lock(queue: IdleSafeJobQueue) -> None:
    recv = receive(queue)
    waiting = threading.Thread(target=recv, args=(2.0,))
    waiting.start()
    time.sleep(0.2)  # waiting in the pipe by now
    try:
        # Taken at once while the "child" waits: a child killed now would leave it free.
        assert queue._rlock.acquire(timeout=1.0)
        queue._rlock.release()
    finally:
        waiting.join(5)
    assert recv(0.01) == (False, None)


def test_a_job_is_read_whole_by_one_child(queue: IdleSafeJobQueue) -> None:
    recv = receive(queue)
    # Larger than a pipe's buffer: written while it is read, and read whole under the lock.
    job = ("TASK", (1, 0, "fun", ("a" * 200_000,), {}))
    writer = threading.Thread(target=queue._writer.send, args=(job,))
    writer.start()
    try:
        assert recv(5.0) == (True, job)
    finally:
        writer.join(5)
    # Another child woken by the same job finds it gone and waits again (falsy, not the
    # sentinel None that stops a child).
    assert queue.get() == NO_JOB
    assert NO_JOB is not None and not NO_JOB


def test_the_blocking_pool_runs_jobs_through_that_pipe() -> None:
    pool = IdleSafeBlockingPool(processes=2)
    try:
        assert isinstance(pool._inqueue, IdleSafeJobQueue)
        assert pool.map(abs, [-1, -2, -3, -4]) == [1, 2, 3, 4]
    finally:
        pool.terminate()
        pool.join()
