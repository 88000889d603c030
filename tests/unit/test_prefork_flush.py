"""The event-loop pool's flush (a warm shutdown, a lost broker connection), on a real pool.

Celery's flush drops the jobs no child has acknowledged, since the broker delivers them again.
A job already written to a live child runs there anyway: dropped, its result would never be read
nor its message acked, and the stored task came back to the next worker
(tests/faults/test_process_faults.py stops a worker under load for real).
"""

from __future__ import annotations

from collections.abc import Iterator

import billiard
import pytest
from billiard.pool import ApplyResult

from forwarder.celery_ext.prefork import PromptAsynPool


@pytest.fixture
def pool() -> Iterator[PromptAsynPool]:
    asyn_pool = PromptAsynPool(processes=1, threads=False)
    try:
        yield asyn_pool
    finally:
        asyn_pool._cache.clear()  # the jobs here were never sent: nothing to wait for
        asyn_pool.terminate()
        asyn_pool.join()


def test_a_job_written_to_a_live_child_outlasts_the_flush(pool: PromptAsynPool) -> None:
    handed = ApplyResult(pool._cache, callback=None)
    handed._write_to = pool._pool[0]
    unsent = ApplyResult(pool._cache, callback=None)
    started = ApplyResult(pool._cache, callback=None)
    started._accepted = True

    pool.flush()

    assert set(pool._cache) == {handed._job, started._job}
    assert unsent._job not in pool._cache


def test_a_job_written_to_a_child_no_longer_alive_is_dropped(pool: PromptAsynPool) -> None:
    gone = billiard.Process()  # never started: not alive, as a child that has exited
    orphan = ApplyResult(pool._cache, callback=None)
    orphan._write_to = gone

    pool.flush()

    assert orphan._job not in pool._cache
