"""Secrets in a message never reach the worker's log or the logging hook's records.

A real worker at DEBUG, the callback and logging hooks (file sink), tasks carrying Basic and
mTLS callback credentials and a callback URL with a password in it, succeeding and failing.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from support.callbacks import CallbackReceiver
from support.processes import Processes
from support.waiting import wait_all

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRETS = ("pw-Zq81secret", "MIIEvKEYZq81secret", "url-Zq81secret")
PEM_KEY = f"-----BEGIN PRIVATE KEY-----\n{SECRETS[1]}\n-----END PRIVATE KEY-----\n"


@pytest.mark.timeout(60)
def test_secrets_are_masked_in_logs_and_records(
    procs: Processes, redis_url: str, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    records = tmp_path / "records.jsonl"
    config = tmp_path / "hooks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hooks": ["callback", "logging"],
                "endpoint": {"id": "end_1", "name": "echo", "type": "async"},
                "callback": {"max_attempts": 1, "timeout_seconds": 2},
                "logging": {"sink": "file", "path": str(records)},
            }
        )
    )
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        queue="secrets",
        concurrency=2,
        extra_args=["--config", str(config), "--log-level", "DEBUG"],
    )
    client = procs.client(broker_url=redis_url, queue="secrets")
    basic = {"kind": "basic", "username": "u", "password": SECRETS[0]}
    mtls = {"kind": "mtls", "cert": "-----BEGIN CERTIFICATE-----x", "key": PEM_KEY}
    url = f"http://user:{SECRETS[2]}@127.0.0.1:{callback_receiver.port}/cb"
    ids = [
        client.submit({"args": {"n": 1}, "callback_url": url, "callback_auth": basic}),
        client.submit({"args": {"n": 2}, "callback_url": url, "callback_auth": mtls}),
        client.submit({"args": {"n": 3}, "cloudpickle": "x", "callback_auth": basic}),
    ]
    wait_all(client, ids, timeout=30)
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
    written = records.read_text() if records.exists() else ""
    assert "REQUEST_BODY" in written, "no logging-hook records were written"
    for secret in SECRETS:
        assert secret not in worker.log(), f"{secret} in the worker's log"
        assert secret not in written, f"{secret} in the logging hook's records"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://user:pw@127.0.0.1:1/cb", "http://user:***@127.0.0.1:1/cb"),
        ("https://u:p:q@h/x", "https://u:***@h/x"),
        ("http://127.0.0.1/cb?a=b@c", "http://127.0.0.1/cb?a=***"),
        ("http://user@h/cb", "http://user@h/cb"),
    ],
)
def test_callback_url_password_is_masked_in_records(url: str, masked: str) -> None:
    from forwarder.config.masking import masked_request

    assert masked_request({"callback_url": url, "args": {}}) == {"callback_url": masked, "args": {}}
