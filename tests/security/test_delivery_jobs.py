"""Delivery jobs come off a queue anyone with broker access can write to: a job is held to the
same rules as the callback that made it, decided again when it is sent.

Real receivers on 127.0.0.1 and the real sender with its real, address-checking HTTP client.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder.config.hooks import BasicAuth, CallbackSettings
from forwarder.hooks.deliveries.jobs import DeliveryJob
from forwarder.hooks.deliveries.sender import Sender
from support.callbacks import CallbackReceiver

DEFAULT_AUTH = BasicAuth("operator", "default-pass-0123")
BASIC = "Basic " + base64.b64encode(b"operator:default-pass-0123").decode()


@pytest.fixture
def receivers() -> Iterator[tuple[CallbackReceiver, CallbackReceiver]]:
    with CallbackReceiver() as default, CallbackReceiver() as other:
        yield default, other


def sender(default: CallbackReceiver, **settings: Any) -> Sender:
    values: dict[str, Any] = {
        "default_url": default.url(),
        "default_auth": DEFAULT_AUTH,
        "allow_private_networks": True,
        "timeout_seconds": 5,
        **settings,
    }
    return Sender(CallbackSettings(**values))


def job(url: str, *, default_auth: bool) -> DeliveryJob:
    return DeliveryJob("t1", url, "{}", "q", time.time(), default_auth=default_auth)


def test_a_job_claiming_the_default_credentials_gets_them_only_at_the_default_url(
    receivers: tuple[CallbackReceiver, CallbackReceiver],
) -> None:
    default, other = receivers
    send = sender(default)
    try:
        assert send.send(job(other.url(), default_auth=True)).delivered
        assert send.send(job(default.url("/elsewhere"), default_auth=True)).delivered
        assert send.send(job(default.url(), default_auth=True)).delivered
    finally:
        send.close()
    [to_other] = other.received
    assert "Authorization" not in to_other.headers
    elsewhere, home = default.received
    assert "Authorization" not in elsewhere.headers
    assert home.headers["Authorization"] == BASIC


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://[fd00:ec2::254]/",
    ],
)
def test_a_job_naming_a_metadata_address_is_refused_without_a_connection(
    receivers: tuple[CallbackReceiver, CallbackReceiver], url: str
) -> None:
    default, _ = receivers
    send = sender(default)
    try:
        started = time.monotonic()
        result = send.send(job(url, default_auth=True))
    finally:
        send.close()
    assert (result.delivered, result.retry, result.status) == (False, False, None)
    assert "metadata" in result.problem or "link-local" in result.problem, result.problem
    assert time.monotonic() - started < 2, "refused before any connection attempt"


def test_a_job_to_a_private_address_is_refused_unless_the_operator_allows_it(
    receivers: tuple[CallbackReceiver, CallbackReceiver],
) -> None:
    default, other = receivers
    send = sender(default, allow_private_networks=False)
    try:
        result = send.send(job(other.url(), default_auth=False))
    finally:
        send.close()
    assert not result.delivered and not result.retry, result
    assert other.received == []
