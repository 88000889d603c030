"""The embedded broker's transport: a message is read only once it is there whole."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport.virtual import Empty

from forwarder.celery_ext.filesystem_transport import Transport

QUEUE = "embedded"


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Any]:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    with Connection(transport=Transport, transport_options=options) as connection:
        yield connection.default_channel


def folder_of(channel: Any) -> Path:
    return Path(channel.data_folder_in)


def test_a_message_is_read_back_whole_and_leaves_the_folder(channel: Any) -> None:
    channel._put(QUEUE, {"body": "x" * 10_000})
    assert channel._get(QUEUE) == {"body": "x" * 10_000}
    assert list(folder_of(channel).iterdir()) == []
    with pytest.raises(Empty):
        channel._get(QUEUE)


def test_a_message_is_private_to_its_owner_and_named_as_kombu_names_it(channel: Any) -> None:
    channel._put(QUEUE, {"n": 1})
    (message,) = folder_of(channel).iterdir()
    assert message.name.endswith(f".{QUEUE}.msg")
    assert stat.S_IMODE(message.stat().st_mode) == 0o600


def test_an_empty_file_a_producer_has_only_created_is_left_for_a_later_poll(
    channel: Any,
) -> None:
    # What a plain kombu producer leaves for an instant: the file, not yet written.
    created = folder_of(channel) / f"1_00000000-0000-0000-0000-000000000000.{QUEUE}.msg"
    created.touch()
    with pytest.raises(Empty):
        channel._get(QUEUE)
    assert created.exists()
    created.write_text(json.dumps({"n": 2}))
    assert channel._get(QUEUE) == {"n": 2}


def test_a_message_still_being_written_by_this_transport_is_no_queue_s(channel: Any) -> None:
    partial = folder_of(channel) / f"1_00000000-0000-0000-0000-000000000000.{QUEUE}.msg.writing"
    partial.write_text('{"n": ')
    with pytest.raises(Empty):
        channel._get(QUEUE)
    assert partial.exists()


def test_every_message_comes_out_once_and_nothing_is_left_behind(channel: Any) -> None:
    for n in range(5):
        channel._put(QUEUE, {"n": n})
    # Within one millisecond kombu's names order messages by a random id, as kombu does.
    assert sorted(channel._get(QUEUE)["n"] for _ in range(5)) == list(range(5))
    assert not any(
        name.endswith((".taken", ".writing")) for name in os.listdir(channel.data_folder_in)
    )
