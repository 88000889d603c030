"""What every forwarder result backend adds to Celery's: the ``custom`` error payload."""

from __future__ import annotations

import json
import traceback
from typing import Any

__all__ = ["ErrorPayloadMixin", "error_payload"]


def error_payload(exc: BaseException) -> dict[str, str]:
    """model-engine's error body: the message, and the stack trace behind "Internal failure"."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": str(exc), "error_metadata": f"Internal failure\n{stack}"}


class ErrorPayloadMixin:
    """Stores ``custom`` beside Celery's ``exc_type`` / ``exc_message`` in the same write.

    Writing it in the one store of the failure (rather than updating the state afterwards) means
    a reader never sees a FAILURE without its ``custom`` field.
    """

    def prepare_exception(self, exc: BaseException, serializer: str | None = None) -> Any:
        prepared = super().prepare_exception(exc, serializer)  # type: ignore[misc]
        if isinstance(prepared, dict):
            prepared["custom"] = json.dumps(error_payload(exc))
        return prepared
