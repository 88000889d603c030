"""Server-sent events on the wire: parsing a byte stream into events, and writing one.

Parsing follows the WHATWG rules a browser's ``EventSource`` follows: lines end in LF (or
CRLF), ``data`` lines join with LF, ``event`` names the event (``message`` when absent), a
blank line dispatches, comments (``:``) and other fields are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from forwarder.events.base import Event

__all__ = ["format_event", "lines", "sse_events", "sse_fields"]


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a byte stream, split on LF (a CR before it dropped), decoded as UTF-8."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if rest:
        yield rest.removesuffix(b"\r").decode("utf-8", "replace")


def sse_fields(chunks: Iterable[bytes]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event name, data) of each event dispatched; id None when the event had none."""
    event_id: str | None = None
    name, data = "", list[str]()
    for line in lines(chunks):
        if not line:
            if data:
                yield event_id, name or "message", "\n".join(data)
            event_id, name, data = None, "", list[str]()
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
    if data:
        yield event_id, name or "message", "\n".join(data)


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each event dispatched."""
    for _, name, data in sse_fields(chunks):
        yield name, data


def format_event(event: Event) -> str:
    """``event`` as SSE: its id (what ``Last-Event-ID`` resumes from), kind and data."""
    data = "".join(f"data: {line}\n" for line in event.data.split("\n"))
    return f"id: {event.id}\nevent: {event.kind}\n{data}\n"
