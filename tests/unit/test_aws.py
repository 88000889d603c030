"""RefreshingClient: one client per process, rebuilt only near expiry, never lost to a failed build."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from forwarder.config.hooks import LoggingSettings
from forwarder.errors import ConfigError
from forwarder.hooks.aws import RefreshingClient, assume_role_firehose_client, aws_region

LEEWAY = timedelta(minutes=10)


def in_(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


class Builds:
    """A build function that hands out numbered clients with the expiries it is given."""

    def __init__(self, *outcomes: timedelta | Exception | None) -> None:
        self.outcomes: Iterator[timedelta | Exception | None] = iter(outcomes)
        self.calls = 0

    def __call__(self) -> tuple[str, datetime | None]:
        self.calls += 1
        outcome = next(self.outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return f"client-{self.calls}", None if outcome is None else in_(outcome)


def test_built_once_while_the_credentials_are_valid() -> None:
    build = Builds(timedelta(hours=1))
    cache = RefreshingClient(build, leeway=LEEWAY)

    clients = {cache.get() for _ in range(1000)}

    assert clients == {"client-1"}
    assert build.calls == cache.builds == 1


def test_no_expiry_is_never_rebuilt() -> None:
    build = Builds(None)
    cache = RefreshingClient(build, leeway=LEEWAY)

    assert [cache.get() for _ in range(100)] == ["client-1"] * 100
    assert cache.expiry is None
    assert cache.builds == 1


def test_rebuilt_once_within_the_leeway_of_expiry() -> None:
    # 5 minutes left is inside a 10-minute leeway; 11 minutes left is not.
    build = Builds(timedelta(minutes=5), timedelta(minutes=11))
    cache = RefreshingClient(build, leeway=LEEWAY)

    assert cache.get() == "client-1"
    assert cache.get() == "client-2"
    assert cache.get() == "client-2"
    assert cache.builds == 2


def test_failed_rebuild_keeps_the_old_client_and_expiry_then_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    build = Builds(timedelta(minutes=5), RuntimeError("sts is down"), timedelta(hours=1))
    cache = RefreshingClient(build, leeway=LEEWAY)
    first = cache.get()
    first_expiry = cache.expiry

    with caplog.at_level(logging.WARNING, logger="forwarder.hooks.aws"):
        assert cache.get() == first
    assert cache.expiry == first_expiry
    assert (cache.builds, cache.failed_builds) == (1, 1)
    assert "keeping the current one" in caplog.text

    assert cache.get() == "client-3"
    assert cache.expiry is not None and first_expiry is not None
    assert cache.expiry > first_expiry
    assert (cache.builds, cache.failed_builds) == (2, 1)


def test_first_build_failure_propagates_and_the_next_get_retries() -> None:
    build = Builds(RuntimeError("no credentials"), timedelta(hours=1))
    cache = RefreshingClient(build, leeway=LEEWAY)

    with pytest.raises(RuntimeError, match="no credentials"):
        cache.get()
    assert cache.builds == 0

    assert cache.get() == "client-2"
    assert cache.builds == 1


def test_concurrent_gets_build_once() -> None:
    calls = 0

    def slow_build() -> tuple[object, datetime | None]:
        nonlocal calls
        calls += 1
        time.sleep(0.1)  # long enough for every thread to arrive while the build runs
        return object(), in_(timedelta(hours=1))

    cache = RefreshingClient(slow_build, leeway=LEEWAY)
    start = threading.Barrier(16)
    got: list[object] = []

    def get() -> None:
        start.wait()
        got.append(cache.get())

    threads = [threading.Thread(target=get) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(got) == 16
    assert len({id(client) for client in got}) == 1
    assert calls == cache.builds == 1


def test_a_new_process_builds_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    build = Builds(timedelta(hours=1), timedelta(hours=1))
    cache = RefreshingClient(build, leeway=LEEWAY)
    assert cache.get() == "client-1"

    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)

    assert cache.get() == "client-2"
    assert cache.get() == "client-2"
    assert cache.builds == 1  # counted per process, like the client


@pytest.mark.parametrize(
    "call",
    [
        lambda settings: assume_role_firehose_client(settings, 10),
        aws_region,
    ],
)
def test_missing_boto3_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[LoggingSettings], object]
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)

    with pytest.raises(ConfigError) as caught:
        call(LoggingSettings(sink="firehose", stream_name="s"))

    assert "pip install 'inference-forwarder[aws]'" in str(caught.value)


def test_region_comes_from_the_settings_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert aws_region(LoggingSettings(region="us-west-2")) == "us-west-2"
    assert aws_region(LoggingSettings()) == "eu-west-1"

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match=r"logging\.region"):
        aws_region(LoggingSettings())
