"""A model reply past ``worker.max_response_bytes`` fails its task alone, read only to the bound.

The echo server sends 50 MB of JSON, chunked (no length announced, so only reading it counts);
the worker's resident memory stays near where it was, where reading the reply whole added more
than 200 MiB.
"""

from __future__ import annotations

import psutil
import pytest

from support.processes import Processes
from support.workers import Worker

pytestmark = [pytest.mark.integration]

FIFTY_MB = 50 * 1000 * 1000
MIB = 1024 * 1024


def resident_bytes(worker: Worker) -> int:
    processes = [psutil.Process(worker.pid), *worker.children()]
    return sum(process.memory_info().rss for process in processes)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_50_mb_reply_fails_the_task_with_a_clear_error_and_memory_stays_bounded(
    pool: str, procs: Processes, redis_url: str
) -> None:
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, pool=pool, queue="large", broker_url=redis_url)
    client = procs.client(broker_url=redis_url, queue="large")
    warm = client.submit({"args": {"reply_bytes": 1000}})
    assert client.wait(warm, timeout=20).status == "SUCCESS"
    before = resident_bytes(worker)

    large = client.submit({"args": {"reply_bytes": FIFTY_MB}})
    failed = client.wait(large, timeout=40)
    assert failed.status == "FAILURE", failed
    assert failed.error == (
        f"model server at http://127.0.0.1:{echo.port}/predict replied with more than "
        f"worker.max_response_bytes={16 * MIB} (more than {16 * MIB} bytes read); the reply "
        "was not read further and the connection closed"
    )
    grown = resident_bytes(worker) - before
    assert grown < 80 * MIB, f"resident memory grew by {grown / MIB:.0f} MiB"

    after = client.submit({"args": {"n": 1}})
    assert client.wait(after, timeout=20).result == {"result": '{"n": 1}', "status_code": 200}
