"""Which caller submitted each task: the gateway answers a task only to the caller that sent it.

A caller (principal) is named by a hash of its token, so the record beside the task's result
never holds the token itself; without tokens every caller is ``anonymous``. The record sits in the
result backend's key/value store under ``forwarder-owner-<task id>`` (Redis, S3 or the embedded
folder alike), written before the task is sent so that it exists whenever the task does.
A task without a record was not submitted through a gateway and reads as unknown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Protocol

from forwarder.protocol import owner_key_name

__all__ = ["ANONYMOUS", "BackendOwners", "TaskOwners", "is_owner", "principal_of"]

ANONYMOUS = "anonymous"


def principal_of(token: str) -> str:
    """The stored name of a token's holder: the token's hash, which no reader can turn back."""
    return "token-" + hashlib.sha256(f"forwarder-principal\0{token}".encode()).hexdigest()[:32]


def is_owner(recorded: str | None, principal: str) -> bool:
    return recorded is not None and hmac.compare_digest(recorded, principal)


class TaskOwners(Protocol):
    def record(self, task_id: str, principal: str) -> None: ...

    def owner(self, task_id: str) -> str | None:
        """The principal that submitted ``task_id``; None for a task no gateway issued."""
        ...


class BackendOwners:
    """The records in a forwarder result backend (``ForwarderClient(...).app.backend``)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _key(self, task_id: str) -> Any:
        return self.backend.key_t(owner_key_name(task_id))

    def record(self, task_id: str, principal: str) -> None:
        self.backend.set(self._key(task_id), json.dumps({"principal": principal}))

    def owner(self, task_id: str) -> str | None:
        raw = self.backend.get(self._key(task_id))
        if not raw:
            return None
        try:
            principal = json.loads(raw)["principal"]
        except (ValueError, TypeError, KeyError):
            return None  # torn or foreign content: no one's
        return principal if isinstance(principal, str) else None
