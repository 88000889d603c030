"""``GET /v1/async-tasks/{task_id}/events``: a task's event log as server-sent events.

Each event goes out as ``id``, ``event`` (``chunk``, ``progress`` or ``state``) and ``data`` (a
JSON text). The stream starts after the ``Last-Event-ID`` header's id (or the ``after`` query
parameter's; a browser's ``EventSource`` sends the header when it reconnects), else at the
first event, so a reader that comes late still gets the whole log; it ends after the ``state``
event, the task's final state. While nothing is new a comment line keeps proxies from closing
the connection; one response lasts at most ``MAX_STREAM_SECONDS``, then the reader resumes.
The log is read in a worker thread, never on the event loop, like every other broker call.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations at run time.

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import StreamingResponse

from forwarder.events import EventLog
from forwarder.events.follow import Follower
from forwarder.events.sse import format_event
from forwarder.gateway.routes import TaskRoutes, include_task_router

__all__ = ["KEEPALIVE_SECONDS", "MAX_STREAM_SECONDS", "POLL_SECONDS", "add_events_route"]

log = logging.getLogger("forwarder.gateway.app")

POLL_SECONDS = 0.05
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 3600.0
EventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)]
AfterId = Annotated[
    str | None, Query(max_length=100, description="Start after this event id (Last-Event-ID)")
]


def add_events_route(app: FastAPI, routes: TaskRoutes, event_log: Callable[[], EventLog]) -> None:
    router = routes.task_router()
    OwnedTask = Annotated[str, Depends(routes.owned_task)]
    broker = routes.broker

    @router.get(
        "/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "The task's events"}},
        summary="A task's events, live, as server-sent events; resumable with Last-Event-ID",
    )
    async def task_events(
        task_id: OwnedTask, last_event_id: EventId = None, after: AfterId = None
    ) -> StreamingResponse:
        follower = Follower(event_log(), broker.get, task_id, last_event_id or after)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_stream(follower), media_type="text/event-stream", headers=headers)

    include_task_router(app, router)


async def _stream(follower: Follower) -> AsyncIterator[str]:
    started = quiet_since = time.monotonic()
    while not follower.done and time.monotonic() - started < MAX_STREAM_SECONDS:
        try:
            events = await anyio.to_thread.run_sync(follower.poll)
        except Exception:
            # The reader resumes from the last id it has; nothing is lost by ending here.
            log.exception("events of task %s: the result store did not answer", follower.task_id)
            return
        for event in events:
            yield format_event(event)
        now = time.monotonic()
        if events:
            quiet_since = now
        elif now - quiet_since >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = now
        if not events:
            await anyio.sleep(POLL_SECONDS)
