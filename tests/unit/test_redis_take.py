"""How many messages a take asks for: the free slots when busy or on an event loop, else one."""

from __future__ import annotations

import types

import pytest

from forwarder.celery_ext import redis_take
from forwarder.celery_ext.redis_take import BUSY, BUSY_WINDOW, TakingChannel


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    made = Clocks()
    fake = types.SimpleNamespace(monotonic=lambda: made.wall, process_time=lambda: made.cpu)
    monkeypatch.setattr(redis_take, "time", fake)
    return made


def channel(free: int | None, on_event_loop: bool = False) -> TakingChannel:
    made = TakingChannel.__new__(TakingChannel)  # a take size needs only the QoS and the clocks
    made.connection = types.SimpleNamespace(on_event_loop=on_event_loop)
    made._qos = types.SimpleNamespace(can_consume_max_estimate=lambda: free)
    made._window = (redis_take.time.monotonic(), redis_take.time.process_time())
    return made


def test_a_process_with_cpu_to_spare_takes_one_at_a_time(clocks: Clocks) -> None:
    taking = channel(free=32)
    assert taking._take_size() == 1
    clocks.advance(wall=BUSY_WINDOW, cpu=BUSY_WINDOW * (BUSY - 0.2))
    assert taking._take_size() == 1


def test_a_busy_process_takes_every_free_slot_until_it_is_idle_again(clocks: Clocks) -> None:
    taking = channel(free=32)
    clocks.advance(wall=BUSY_WINDOW, cpu=BUSY_WINDOW * (BUSY + 0.05))
    assert taking._take_size() == 32
    clocks.advance(wall=BUSY_WINDOW / 2, cpu=0.0)  # the window is not over: still busy
    assert taking._take_size() == 32
    clocks.advance(wall=BUSY_WINDOW, cpu=0.0)
    assert taking._take_size() == 1


def test_a_busy_process_with_no_slot_limit_takes_one(clocks: Clocks) -> None:
    taking = channel(free=None)  # prefetch 0: kombu estimates nothing
    clocks.advance(wall=BUSY_WINDOW, cpu=BUSY_WINDOW)
    assert taking._take_size() == 1


def test_a_channel_on_an_event_loop_takes_every_free_slot(clocks: Clocks) -> None:
    """The prefork pool's parent: its tasks' CPU is the children's, not its own."""
    taking = channel(free=4, on_event_loop=True)
    assert taking._take_size() == 4
    clocks.advance(wall=BUSY_WINDOW, cpu=0.0)
    assert taking._take_size() == 4
