"""Submit, read and cancel tasks through a gateway's HTTP API: ``ForwarderClient``'s API over HTTP.

One keep-alive ``requests.Session`` per client. Results come back as the same ``TaskResult`` that
``ForwarderClient`` returns: the gateway lifts ``status_code`` out of a stored result (as
model-engine's does), and this client puts it back, so either client's result reads the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests

from forwarder.client.broker import TaskResult, wait_for_final
from forwarder.errors import GatewayError, TaskWaitTimeout
from forwarder.events import Event
from forwarder.events.sse import sse_fields

__all__ = ["GatewayClient"]

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read


class GatewayClient:
    """``submit(payload) -> task_id``, ``get``, ``wait`` and ``cancel`` against ``url``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.session.request(
                method, f"{self.url}{path}", timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise GatewayError(f"gateway {self.url} unreachable: {exc}") from None
        if reply.status_code >= 400:
            raise GatewayError(
                f"gateway answered {reply.status_code} to {method} {path}: {_detail(reply)}",
                reply.status_code,
            )
        try:
            return reply.json()
        except ValueError:
            raise GatewayError(
                f"gateway answered {method} {path} with a body that is not JSON",
                reply.status_code,
            ) from None

    def submit(
        self,
        payload: dict[str, Any],
        *,
        ttl_seconds: float | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        body = dict(payload)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        reply = self._call("POST", "/v1/async-tasks", json=body, headers=headers)
        return str(reply["task_id"])

    def get(self, task_id: str) -> TaskResult:
        return _task_result(self._call("GET", f"/v1/async-tasks/{quote(task_id, safe='')}"))

    def cancel(self, task_id: str) -> TaskResult:
        path = f"/v1/async-tasks/{quote(task_id, safe='')}/cancel"
        return _task_result(self._call("POST", path))

    def wait(self, task_id: str, timeout: float = 60.0, poll: float = 0.05) -> TaskResult:
        """Poll until the task is final; raise ``TaskWaitTimeout`` after ``timeout`` seconds."""
        return wait_for_final(self.get, task_id, timeout, poll)

    def events(
        self, task_id: str, after: str | None = None, *, timeout: float | None = None
    ) -> Iterator[Event]:
        """The task's events from the gateway's SSE route, as ``ForwarderClient.events``; a
        dropped connection resumes from the last id seen (``Last-Event-ID``)."""
        path = f"/v1/async-tasks/{quote(task_id, safe='')}/events"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            headers = {"Last-Event-ID": after} if after is not None else {}
            try:
                with self.session.get(
                    f"{self.url}{path}", headers=headers, stream=True, timeout=self.timeout
                ) as reply:
                    if reply.status_code >= 400:
                        raise GatewayError(
                            f"gateway answered {reply.status_code} to GET {path}: {_detail(reply)}",
                            reply.status_code,
                        )
                    for event_id, kind, data in sse_fields(reply.iter_content(None)):
                        event = Event(event_id or "", kind, data)
                        yield event
                        after = event.id
                        if event.final:
                            return
            except requests.RequestException as exc:
                if deadline is None or time.monotonic() >= deadline:
                    raise GatewayError(f"gateway {self.url} unreachable: {exc}") from None
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskWaitTimeout(f"task {task_id} did not end within {timeout:g} s")

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _detail(reply: requests.Response) -> str:
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        return reply.text[:200]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        )
    return str(detail)


def _task_result(view: dict[str, Any]) -> TaskResult:
    result = view.get("result")
    status_code = view.get("status_code")
    if status_code is not None and isinstance(result, dict):
        result = {**result, "status_code": status_code}
    traceback = view.get("traceback")
    error = None
    if traceback and view["status"] != "SUCCESS":
        # The gateway's one text is a stack trace, whose last line is "Type: message", or the
        # reason alone (EXPIRED, TIMEOUT, CANCELED), which ForwarderClient reports as the error.
        lines = traceback.strip().splitlines()
        error = lines[-1]
        if len(lines) == 1:
            traceback = None
    return TaskResult(
        task_id=str(view["task_id"]),
        status=str(view["status"]),
        result=result,
        error=error,
        traceback=traceback,
    )
