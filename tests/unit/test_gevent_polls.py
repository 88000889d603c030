"""The readiness checks' poll under gevent: the kernel's at timeout 0, still green for a wait.

Each case runs in a fresh interpreter that gevent patched first, as a gevent worker is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")

CHECKS = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, socket, time
    import gevent
    import redis._parsers.hiredis as hiredis
    import urllib3.util.wait as wait
    from forwarder.worker import gevent_polls

    report = {"rebound": gevent_polls.native_readiness_polls()}
    made = []
    for module in (hiredis, wait):
        namespace = module.select
        build = namespace.poll
        namespace.poll = lambda build=build: made.append(1) or build()

    quiet, peer = socket.socketpair()
    report["idle"] = [hiredis._socket_can_read(quiet, 0), wait.wait_for_read(quiet, timeout=0)]
    peer.send(b"+OK\\r\\n")
    report["data"] = [hiredis._socket_can_read(quiet, 0), wait.wait_for_read(quiet, timeout=0)]
    report["polls_made"] = len(made)

    # A wait must leave the hub free: the greenlet that sends runs while the check waits.
    waiting, sender = socket.socketpair()
    gevent.spawn_later(0.05, sender.send, b"x")
    started = time.monotonic()
    report["waited"] = [hiredis._socket_can_read(waiting, 5.0), time.monotonic() - started]
    print(json.dumps(report))
    """
)


def test_zero_timeout_checks_use_the_kernels_poll_and_waits_stay_green() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", CHECKS], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["rebound"] == ["redis._parsers.hiredis", "urllib3.util.wait"]
    assert report["idle"] == [False, False]
    assert report["data"] == [True, True]
    # Each check built its poll from the module's ``select``: the binding the worker replaces.
    assert report["polls_made"] >= 4, "redis-py or urllib3 no longer polls through select.poll"
    readable, seconds = report["waited"]
    assert readable is True
    assert seconds < 2.0, f"the wait blocked the hub for {seconds:.2f} s"


def test_the_poll_registers_and_answers_like_select_poll() -> None:
    import select
    import socket

    from forwarder.worker.gevent_polls import ZeroTimeoutPoll

    greens: list[object] = []

    def green() -> object:
        greens.append(poll := select.poll())
        return poll

    quiet, peer = socket.socketpair()
    with quiet, peer:
        poll = ZeroTimeoutPoll(select.poll, green)
        poll.register(quiet, select.POLLIN)
        assert poll.poll(0) == []
        assert greens == []
        peer.send(b"x")
        assert poll.poll(0) == [(quiet.fileno(), select.POLLIN)]
        assert poll.poll(100) == [(quiet.fileno(), select.POLLIN)]
        assert len(greens) == 1
        poll.unregister(quiet)
        assert poll.poll(0) == []


def test_without_gevent_patching_nothing_is_rebound() -> None:
    from forwarder.worker.gevent_polls import native_readiness_polls

    assert native_readiness_polls() == []
