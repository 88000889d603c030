"""A receiver that answers a byte at a time cannot hold a slot: every attempt and the whole
delivery end at their deadline.

The receiver is real (a socket server on 127.0.0.1 that reads the request and then sends its
reply one byte a second), so every read returns inside its timeout and only a total deadline can
end the call. On the code before the deadlines, each call here took the 41 seconds of the reply.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder.config.hooks import CallbackSettings
from forwarder.errors import CallbackError
from forwarder.hooks.base import HookRunner, TaskOutcome
from forwarder.hooks.callback import CallbackHook
from support.callbacks import DrippingReceiver

# The deadlines below plus room for a loaded machine; far below the reply's 41 s.
MARGIN = 2.5


@pytest.fixture
def dripping() -> Iterator[DrippingReceiver]:
    with DrippingReceiver(interval=1.0) as receiver:
        yield receiver


def outcome(url: str, task_id: str = "t1") -> TaskOutcome:
    return TaskOutcome(task_id, "q", {"callback_url": url}, True, {"result": "ok"})


def hook_for(**settings: Any) -> CallbackHook:
    values: dict[str, Any] = {"allow_private_networks": True, "backoff_seconds": 0.05, **settings}
    return CallbackHook(CallbackSettings(**values))


def test_one_attempt_ends_at_timeout_seconds(dripping: DrippingReceiver) -> None:
    hook = hook_for(timeout_seconds=2.0, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(CallbackError, match=r"no whole reply within 2 s"):
        hook(outcome(dripping.url()))
    elapsed = time.monotonic() - started
    hook.close()
    assert 1.9 <= elapsed < 2.0 + MARGIN, f"one attempt took {elapsed:.2f} s"


def test_the_whole_delivery_ends_at_deadline_seconds(dripping: DrippingReceiver) -> None:
    hook = hook_for(timeout_seconds=1.5, max_attempts=10, deadline_seconds=4.0)
    runner = HookRunner([hook])
    started = time.monotonic()
    runner.run(outcome(dripping.url()))  # a counted failure, never raised
    elapsed = time.monotonic() - started
    runner.close()
    assert runner.counts["callback"].failures == 1
    assert elapsed < 4.0 + MARGIN, f"the delivery took {elapsed:.2f} s"
    # Two attempts of 1.5 s fit in 4 s; a third starts with what is left, never a tenth.
    assert 2 <= dripping.connections <= 3


def test_greenlets_each_end_at_their_deadline(dripping: DrippingReceiver) -> None:
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import time
        import gevent.pool
        from forwarder.config.hooks import CallbackSettings
        from forwarder.errors import CallbackError
        from forwarder.hooks.base import TaskOutcome
        from forwarder.hooks.callback import CallbackHook

        hook = CallbackHook(CallbackSettings(
            allow_private_networks=True, timeout_seconds=2.0, max_attempts=1))

        def one(n):
            try:
                hook(TaskOutcome(f"g{{n}}", None, {{"callback_url": {dripping.url()!r}}}, True, 1))
            except CallbackError as exc:
                return str(exc)

        started = time.monotonic()
        errors = gevent.pool.Pool(4).map(one, range(4))
        print(time.monotonic() - started)
        print(sum("no whole reply" in (e or "") for e in errors))
        hook.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    elapsed, timed_out = done.stdout.split()
    assert int(timed_out) == 4, done.stdout
    assert float(elapsed) < 2.0 + MARGIN, f"4 greenlets took {float(elapsed):.2f} s"
