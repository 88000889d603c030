"""What a callback carries: the result itself (``full``), or where to fetch it (``notify``).

``notify`` is for results too large or too sensitive to push: the receiver learns the task's id
and final state (and the model's status code on success) and fetches the result itself, from
``callback.result_url`` with the task id filled in when that is set.
"""

from __future__ import annotations

import json
from typing import Any

from forwarder.config.hooks import CallbackSettings
from forwarder.errors import CallbackError
from forwarder.hooks.base import TaskOutcome

__all__ = ["callback_body"]


def callback_body(outcome: TaskOutcome, settings: CallbackSettings) -> bytes:
    """The JSON body of ``outcome``'s callback, as ``callback.body`` says."""
    body = outcome.response_body() if settings.body == "full" else _notify(outcome, settings)
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CallbackError(f"the result of task {outcome.task_id} is not JSON: {exc}") from None


def _notify(outcome: TaskOutcome, settings: CallbackSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"task_id": outcome.task_id, "status": outcome.status}
    if outcome.succeeded and isinstance(outcome.result, dict):
        code = outcome.result.get("status_code")
        if isinstance(code, int) and not isinstance(code, bool):
            body["status_code"] = code
    if settings.result_url:
        body["result_url"] = settings.result_url.replace("{task_id}", outcome.task_id)
    return body
