"""Every error the forwarder raises on purpose derives from one root.

    ForwarderError
     ├── ConfigError                 a setting has a value that is not allowed (stops start-up)
     ├── PayloadError                a task's payload cannot be forwarded (fails that task only)
     ├── ModelServerError            the model server did not give a usable reply (fails that task)
     │    ├── ModelServerUnavailable   could not connect, after every retry
     │    ├── ModelServerTimeout       connected, but no reply within the timeout
     │    └── ModelResponseError       replied, but the body is not JSON (or not a usable stream)
     │         └── ModelResponseTooLarge   replied with more than worker.max_response_bytes
     ├── TaskStopped                 the task ended without a model reply, by its limits or a client
     │    ├── TaskExpired              waited in the queue past its ttl_seconds (never forwarded)
     │    ├── TaskDeadlineExceeded     the model call outlived its timeout_seconds (abandoned)
     │    ├── TaskCanceled             canceled by a client (never forwarded, or abandoned)
     │    └── DeadLettered             delivered again after max_deliveries unfinished deliveries
     ├── HookError                   a hook failed (logged and counted; the task is unaffected)
     │    └── CallbackError            the callback was not delivered
     │         └── CallbackRefused          its URL or address is not allowed (nothing sent)
     └── ClientError                 raised by the client (submit / get / wait)
          ├── GatewayError             the gateway refused a request or did not answer
          └── TaskWaitTimeout          the task did not finish within the wait

Task errors carry a single message argument so that any Celery client can rebuild them from the
stored ``exc_type`` / ``exc_message``.
"""

from __future__ import annotations

from forwarder.protocol import CANCELED, EXPIRED, FAILURE, TIMEOUT

__all__ = [
    "CallbackError",
    "CallbackRefused",
    "ClientError",
    "ConfigError",
    "DeadLettered",
    "ForwarderError",
    "GatewayError",
    "HookError",
    "ModelResponseError",
    "ModelResponseTooLarge",
    "ModelServerError",
    "ModelServerTimeout",
    "ModelServerUnavailable",
    "PayloadError",
    "TaskCanceled",
    "TaskDeadlineExceeded",
    "TaskExpired",
    "TaskStopped",
    "TaskWaitTimeout",
]


class ForwarderError(Exception):
    """Root of the forwarder's own errors."""


class ConfigError(ForwarderError):
    """A setting's value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        # The three parts are the args, so that pickle and Celery rebuild it with cls(*args).
        super().__init__(key, value, allowed)

    def __str__(self) -> str:
        # One line always: a key or explanation with a line break (a quoted YAML key) is escaped.
        return _one_line(f"invalid {self.key}={self.value!r}; allowed: {self.allowed}")


_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() splits on


def _one_line(text: str) -> str:
    return "".join(repr(char)[1:-1] if char in _LINE_BREAKS else char for char in text)


class PayloadError(ForwarderError):
    """The task's payload cannot be forwarded (not a JSON object, or not JSON-serialisable)."""


class ModelServerError(ForwarderError):
    """The model server did not give a usable reply."""


class ModelServerUnavailable(ModelServerError):
    """No connection to the model server could be made."""


class ModelServerTimeout(ModelServerError):
    """The model server accepted the request but did not reply in time."""


class ModelResponseError(ModelServerError):
    """The model server replied with a body that is not JSON."""


class ModelResponseTooLarge(ModelResponseError):
    """The model server's reply was larger than ``worker.max_response_bytes``; it was not read."""


class TaskStopped(ForwarderError):
    """The task was ended without a model reply; ``state`` is the final state it stores."""

    state = ""


class TaskExpired(TaskStopped):
    """The task waited in the queue longer than its ``ttl_seconds``; it was never forwarded."""

    state = EXPIRED


class TaskDeadlineExceeded(TaskStopped):
    """The model call outlived the task's ``timeout_seconds``; the call was abandoned."""

    state = TIMEOUT


class TaskCanceled(TaskStopped):
    """A client canceled the task: before it was forwarded, or during its model call."""

    state = CANCELED


class DeadLettered(TaskStopped):
    """Its deliveries kept ending without a result (a crash loop): moved to the dead-letter queue.

    Stored as a plain FAILURE: the task did fail, and every client already knows that state.
    """

    state = FAILURE


class HookError(ForwarderError):
    """A post-inference hook failed; the task's result is unaffected."""


class CallbackError(HookError):
    """The callback was not delivered: a URL not allowed, a refusal, or every attempt failed."""


class CallbackRefused(CallbackError):
    """The callback URL, or an address its host resolves to, is not allowed; nothing was sent."""


class ClientError(ForwarderError):
    """An error on the client side of the queue."""


class GatewayError(ClientError):
    """The gateway refused a request or could not be reached; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TaskWaitTimeout(ClientError):
    """A task did not reach a final state within the wait."""
