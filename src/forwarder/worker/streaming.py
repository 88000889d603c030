"""A model's streamed reply: read as it comes, each piece recorded, the whole assembled at the end.

A reply is a stream when the model server answers ``text/event-stream`` (SSE, as
OpenAI-compatible servers do with ``"stream": true``) or newline-delimited JSON
(``application/x-ndjson``, ``application/jsonl``). Every SSE event's ``data`` (or NDJSON line) is
a ``chunk`` of the task's event log as it arrives, an SSE event named ``progress`` a ``progress``
event; OpenAI's closing ``data: [DONE]`` is not recorded. The reading is the model call's as
for any reply: the per-read timeout, the task's deadline and cancel, ``max_response_bytes``.

The result stored is assembled from the chunks: for OpenAI chat or completion chunks, one
``chat.completion`` / ``text_completion`` with each choice's concatenated text and last
``finish_reason``, and the last chunk's ``usage``; otherwise the list of chunks (JSON values, or
text where a chunk is not JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from forwarder.events import CHUNK, PROGRESS, EventWriter
from forwarder.events.sse import lines, sse_events

__all__ = ["OPENAI_OBJECTS", "Assembler", "StreamReader", "ndjson_events", "stream_kind"]

_SSE_TYPES = ("text/event-stream",)
_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
_DONE = "[DONE]"
# OpenAI's chunk objects, and the object each assembles into.
OPENAI_OBJECTS = {"chat.completion.chunk": "chat.completion", "text_completion": "text_completion"}


def stream_kind(content_type: str | None) -> str | None:
    """``"sse"``, ``"ndjson"`` or None (a reply read whole) for a reply's content type."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _SSE_TYPES:
        return "sse"
    if media in _NDJSON_TYPES:
        return "ndjson"
    return None


def ndjson_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    for line in lines(chunks):
        if line.strip():
            yield "message", line


class Assembler:
    """Builds the stored result from the chunks, keeping as little as the chunks allow."""

    def __init__(self) -> None:
        # The chunks as JSON texts: a third of their parsed size, parsed again only when the
        # result is the list of chunks.
        self.chunks: list[str] = []
        self.openai = True
        self.texts: dict[int, list[str]] = {}
        self.finish_reasons: dict[int, Any] = {}
        self.head: dict[str, Any] = {}
        self.usage: Any = None

    def add(self, value: Any, data: str) -> None:
        self.chunks.append(data)
        if self.openai:
            self.openai = self._add_openai(value)

    def _add_openai(self, value: Any) -> bool:
        if not isinstance(value, dict) or value.get("object") not in OPENAI_OBJECTS:
            return False
        if not self.head:
            self.head = {key: value[key] for key in ("id", "created", "model") if key in value}
            self.head["object"] = OPENAI_OBJECTS[value["object"]]
        for choice in value.get("choices") or ():
            if not isinstance(choice, dict):
                return False
            index = choice.get("index", 0)
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                self.texts.setdefault(index, []).append(text)
            if choice.get("finish_reason") is not None:
                self.finish_reasons[index] = choice["finish_reason"]
        if value.get("usage") is not None:
            self.usage = value["usage"]
        return True

    def result(self) -> Any:
        if not (self.openai and self.chunks):
            return [json.loads(data) for data in self.chunks]
        chat = self.head["object"] == "chat.completion"
        choices = []
        for index in sorted(self.texts.keys() | self.finish_reasons.keys()):
            text = "".join(self.texts.get(index, ()))
            body: dict[str, Any] = (
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            choices.append(
                {"index": index, **body, "finish_reason": self.finish_reasons.get(index)}
            )
        return {**self.head, "choices": choices, "usage": self.usage}


class StreamReader:
    """Reads one streamed reply into ``events`` and returns the assembled result."""

    def __init__(self, kind: str, events: EventWriter | None) -> None:
        self.parse = sse_events if kind == "sse" else ndjson_events
        self.events = events
        self.assembler = Assembler()

    def read(self, chunks: Iterable[bytes]) -> Any:
        for name, data in self.parse(chunks):
            if name != PROGRESS and data.strip() == _DONE:
                continue
            try:
                value = json.loads(data)
            except ValueError:
                # The log holds JSON texts: a chunk of plain text is kept as a JSON string.
                value, data = data, json.dumps(data)
            if name != PROGRESS:
                self.assembler.add(value, data)
            if self.events is not None:
                self.events.add(PROGRESS if name == PROGRESS else CHUNK, data)
        if self.events is not None:
            self.events.flush()
        return self.assembler.result()
