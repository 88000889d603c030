"""Streamed replies: SSE and NDJSON parsing, the assembled result, and the file event log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from forwarder.events import Event
from forwarder.events.files import FileEventLog
from forwarder.events.follow import END_ID, GRACE, Follower
from forwarder.events.sse import sse_events
from forwarder.worker.streaming import StreamReader, stream_kind


def pieces(text: str, size: int = 3) -> list[bytes]:
    """The text's bytes cut into small pieces, as a socket may deliver them."""
    data = text.encode()
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream", "sse"),
        ("text/event-stream; charset=utf-8", "sse"),
        ("application/x-ndjson", "ndjson"),
        ("application/jsonl", "ndjson"),
        ("application/json", None),
        (None, None),
    ],
)
def test_stream_kind(content_type: str | None, kind: str | None) -> None:
    assert stream_kind(content_type) == kind


def test_sse_events_follow_the_parsing_rules() -> None:
    text = (
        ": a comment\r\n"
        "data: one\r\n\r\n"
        'event: progress\ndata: {"p": 1}\nid: 7\n\n'
        "data: two\ndata:three\n\n"
        "retry: 10\n\n"
        "data: last"
    )
    assert list(sse_events(pieces(text))) == [
        ("message", "one"),
        ("progress", '{"p": 1}'),
        ("message", "two\nthree"),
        ("message", "last"),
    ]


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.flushed = 0

    def add(self, kind: str, data: str) -> None:
        self.events.append((kind, data))

    def flush(self) -> None:
        self.flushed += 1


def openai_chunk(content: str | None, finish: str | None = None, **extra: Any) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                       "choices": [choice], **extra})  # fmt: skip


def test_openai_chunks_assemble_into_one_completion() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    text = "".join(
        f"data: {chunk}\n\n"
        for chunk in (openai_chunk("Hel"), openai_chunk("lo"), openai_chunk(None, "stop", usage=usage))
    ) + "event: progress\ndata: {\"done\": 2}\n\ndata: [DONE]\n\n"  # fmt: skip
    recorded = Recorded()
    result = StreamReader("sse", recorded).read(pieces(text, 7))  # type: ignore[arg-type]
    assert result == {
        "id": "c1",
        "model": "m",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"},
             "finish_reason": "stop"}
        ],
        "usage": usage,
    }  # fmt: skip
    assert [kind for kind, _ in recorded.events] == ["chunk", "chunk", "chunk", "progress"]
    assert recorded.flushed == 1


def test_other_chunks_are_kept_as_a_list_plain_text_as_strings() -> None:
    recorded = Recorded()
    lines = '{"n": 1}\n\nnot json\n{"n": 2}'
    result = StreamReader("ndjson", recorded).read(pieces(lines))  # type: ignore[arg-type]
    assert result == [{"n": 1}, "not json", {"n": 2}]
    assert recorded.events == [
        ("chunk", '{"n": 1}'),
        ("chunk", '"not json"'),
        ("chunk", '{"n": 2}'),
    ]


def test_the_file_log_reads_after_an_id_and_numbers_on_after_another_delivery(
    tmp_path: Path,
) -> None:
    log = FileEventLog(str(tmp_path).encode())
    writer = log.writer("t1")
    writer.add("chunk", '"a"')
    writer.add("chunk", '"b"')
    assert [e.id for e in log.read("t1")] == ["1", "2"]
    again = log.writer("t1")
    again.add("chunk", '"c"')
    again.finish("SUCCESS", None)
    assert [(e.id, e.data) for e in log.read("t1", after="2")] == [
        ("3", '"c"'),
        ("4", '{"status": "SUCCESS", "error": null}'),
    ]
    assert log.read("t1", after="4") == []
    assert log.read("missing") == []


def test_events_a_store_refused_are_kept_and_written_next_time(tmp_path: Path) -> None:
    class Blinking(FileEventLog):
        refuse = True

        def _write(self, task_id: str, events: list[tuple[str, str]], first: int) -> None:
            if self.refuse:
                raise OSError("store down")
            super()._write(task_id, events, first)

    log = Blinking(tmp_path)
    writer = log.writer("t")
    writer.add("chunk", '"a"')
    assert log.read("t") == []
    log.refuse = False
    writer.add("chunk", '"b"')
    assert writer.finish("SUCCESS", None)
    assert [(e.id, e.kind) for e in log.read("t")] == [
        ("1", "chunk"),
        ("2", "chunk"),
        ("3", "state"),
    ]


class Stored:
    def __init__(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, error

    @property
    def ready(self) -> bool:
        return self.status in ("SUCCESS", "FAILURE", "TIMEOUT", "CANCELED", "EXPIRED")


def follow_all(follower: Follower, polls: int = 100) -> list[Event]:
    seen: list[Event] = []
    for _ in range(polls):
        seen += follower.poll()
        if follower.done:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not done after {polls} polls: {seen}")


def test_a_task_without_a_log_ends_at_once_with_its_stored_state(tmp_path: Path) -> None:
    state = Stored("PENDING")
    follower = Follower(FileEventLog(tmp_path), lambda _: state, "t")
    assert follower.poll() == [] and not follower.done
    state.status, state.error = "EXPIRED", "waited too long"
    assert follower.poll() == [
        Event(END_ID, "state", '{"status": "EXPIRED", "error": "waited too long"}')
    ]
    assert follower.done


def test_a_log_left_without_its_end_is_ended_from_the_stored_state(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path)
    log.writer("t").add("chunk", '"a"')
    follower = Follower(log, lambda _: Stored("FAILURE", "lost"), "t")
    started = time.monotonic()
    events = follow_all(follower)
    assert time.monotonic() - started >= GRACE
    assert [(e.id, e.kind) for e in events] == [("1", "chunk"), (END_ID, "state")]
    resumed = Follower(log, lambda _: Stored("FAILURE", "lost"), "t", after=END_ID)
    assert [e.id for e in follow_all(resumed)] == [END_ID]


def test_a_follower_stops_at_the_final_event(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path)
    writer = log.writer("t")
    writer.add("chunk", '"a"')
    writer.finish("SUCCESS", None)
    follower = Follower(log, lambda _: Stored("STARTED"), "t", after="1")
    assert [(e.id, e.kind) for e in follower.poll()] == [("2", "state")]
    assert follower.done
