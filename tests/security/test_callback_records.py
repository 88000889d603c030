"""A token in a callback_url's query never reaches the logging hook's records.

Webhook URLs carry their secret in the query (``?token=``, ``?sig=``, by any name), and the
records go to a stream that may be kept for years: each query value is stored as ``***``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwarder.config.hooks import EndpointInfo
from forwarder.hooks.base import TaskOutcome
from forwarder.hooks.logging import LoggingHook
from forwarder.hooks.sinks.file import FileSink

SECRETS = ["tok-3f9a7c1e55", "sig-b81d44e0aa", "k-55c2e9d0"]


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        (
            f"https://hooks.example.com/cb?token={SECRETS[0]}&sig={SECRETS[1]}",
            "https://hooks.example.com/cb?token=***&sig=***",
        ),
        (
            f"https://u:{SECRETS[2]}@hooks.example.com/cb?id={SECRETS[0]}#{SECRETS[1]}",
            "https://u:***@hooks.example.com/cb?id=***#***",
        ),
    ],
)
def test_callback_url_query_values_are_masked_in_the_file_records(
    tmp_path: Path, url: str, stored: str
) -> None:
    path = tmp_path / "records.jsonl"
    hook = LoggingHook(EndpointInfo(id="end_1"), FileSink(path))
    hook(TaskOutcome("t1", "q", {"args": {"n": 1}, "callback_url": url}, True, {"result": 1}))
    hook.close()
    written = path.read_text()
    for secret in SECRETS:
        assert secret not in written
    [record] = [json.loads(line) for line in written.splitlines()]
    assert json.loads(record["REQUEST_BODY"])["callback_url"] == stored
