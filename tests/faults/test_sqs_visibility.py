"""SQS (moto) with a queue visibility timeout shorter than the task: what happens, counted.

kombu's SQS transport receives without a ``VisibilityTimeout`` of its own for predefined queues,
so the queue's attribute applies; ``--task-visibility`` is not sent to SQS on receive. A task
still running when that timeout passes would become visible again and another slot (or worker)
would take it: before ``forwarder.celery_ext.sqs_visibility``, 3 tasks of 5 s on a 2 s queue made 7 model
calls. The worker now renews the visibility of what it holds: one model call per task.
"""

from __future__ import annotations

import os

import pytest

from support.aws import MotoServer
from support.processes import Processes
from support.tally import Tally, submit_all

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

VISIBILITY_SECONDS = 2
TASK_SECONDS = 5


@pytest.fixture
def aws_env(moto_here: MotoServer) -> MotoServer:
    return moto_here


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_sqs_visibility_shorter_than_the_task(
    pool: str, aws_env: MotoServer, procs: Processes, redis_url: str
) -> None:
    count = 3
    sqs = aws_env.client("sqs")
    queue_url = sqs.create_queue(
        QueueName="short", Attributes={"VisibilityTimeout": str(VISIBILITY_SECONDS)}
    )["QueueUrl"]
    flags = {"--sqs-url": queue_url, "--result-backend": redis_url}
    echo = procs.echo()
    procs.worker(
        model_port=echo.port,
        pool=pool,
        queue="short",
        concurrency=count * 2,  # free slots, so a redelivered message is taken at once
        env=aws_env.env,
        extra_args=[item for pair in flags.items() for item in pair],
    )
    client = procs.client(queue="short", extra_flags=flags)
    tally = Tally(
        f"SQS visibility {VISIBILITY_SECONDS} s < task {TASK_SECONDS} s ({pool}, {count} tasks)"
    )
    submit_all(client, tally, [{"args": {"n": n, "delay": TASK_SECONDS}} for n in range(count)])
    tally.wait(redis_url, timeout=40)
    # Let a redelivery that is still running reach the model server before counting.
    tally.model_calls = echo.stats()["predict_requests"]
    tally.report()
    if os.environ.get("FORWARDER_FAULTS_REPORT"):
        print(f"  model calls {tally.model_calls} for {count} tasks")
    assert tally.lost == [], tally.line()
    assert tally.states() == {"SUCCESS": count}, tally.failures()
    assert tally.duplicates == 0, tally.line()
