"""The gateway's request and response bodies: model-engine's, plus the queue TTL and deadline.

``EndpointPredictV1Request``, ``CreateAsyncTaskV1Response`` and ``GetAsyncTaskV1Response`` have
model-engine's field names and meanings, so its clients work unchanged. Unknown request fields are
ignored, as model-engine's gateway ignores them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

__all__ = [
    "MAX_SECONDS",
    "TASK_ID_PATTERN",
    "CallbackBasicAuth",
    "CallbackDeliveryView",
    "CallbackMtlsAuth",
    "CreateAsyncTaskV1Response",
    "EndpointPredictV1Request",
    "ErrorResponse",
    "GetAsyncTaskV1Response",
    "SubmitAsyncTaskRequest",
    "TaskStatus",
]

# A year: far beyond any queue or model call, and well inside what a datetime can add.
MAX_SECONDS = 365 * 24 * 3600.0
# Celery's ids are UUIDs; anything else a client chose must still be safe in a Redis key, an S3
# key or a file name.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$"


class TaskStatus(StrEnum):
    """model-engine's states, then this gateway's terminal ones (RETRY reads as PENDING)."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    UNDEFINED = "UNDEFINED"
    EXPIRED = "EXPIRED"
    TIMEOUT = "TIMEOUT"
    CANCELED = "CANCELED"


class CallbackBasicAuth(BaseModel):
    kind: Literal["basic"]
    username: str
    password: str


class CallbackMtlsAuth(BaseModel):
    kind: Literal["mtls"]
    cert: str
    key: str


Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class EndpointPredictV1Request(BaseModel):
    """model-engine's async request: ``args`` is what the worker POSTs to the model server."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = None
    args: Any = None
    cloudpickle: str | None = None
    callback_url: str | None = None
    callback_auth: (
        Annotated[CallbackBasicAuth | CallbackMtlsAuth, Field(discriminator="kind")] | None
    ) = None
    return_pickled: bool = False
    destination_path: str | None = None


class SubmitAsyncTaskRequest(EndpointPredictV1Request):
    """The request, and how long it may wait in the queue and run."""

    ttl_seconds: Seconds | None = Field(
        default=None,
        description="Seconds the task may wait in the queue; past that it is not forwarded and "
        "ends EXPIRED. Default: the gateway's default_ttl_seconds (none: no limit).",
    )
    timeout_seconds: Seconds | None = Field(
        default=None,
        description="Seconds the model call may take; past that the task ends TIMEOUT. "
        "Default: the gateway's default_timeout_seconds (none: the worker's model timeout).",
    )

    def payload(self) -> dict[str, Any]:
        """The wire payload: model-engine's fields only, as its gateway sends them."""
        return self.model_dump(mode="json", exclude={"ttl_seconds", "timeout_seconds"})


class CreateAsyncTaskV1Response(BaseModel):
    task_id: str


class CallbackDeliveryView(BaseModel):
    """A queued callback's delivery; times are UTC epoch seconds."""

    status: Literal["pending", "delivered", "failed"]
    receiver: str = Field(description="The callback URL's origin")
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None
    stored_at: float
    delivered_at: float | None = None
    redeliveries: int = 0


class GetAsyncTaskV1Response(BaseModel):
    task_id: str
    status: TaskStatus
    result: Any = Field(
        default=None,
        description="On SUCCESS, the stored result without its status_code (model-engine's "
        'gateway lifts it out): {"result": <model reply>}.',
    )
    traceback: str | None = Field(
        default=None, description="On FAILURE the stack trace; on EXPIRED, TIMEOUT, CANCELED why."
    )
    status_code: int | None = Field(
        default=None, description="The model server's HTTP status, on SUCCESS."
    )
    callback: CallbackDeliveryView | None = Field(
        default=None,
        description="The callback's delivery, when it is queued (not model-engine's; left out "
        "when there is none, so that model-engine's shape stays as it was)",
    )

    @model_serializer(mode="wrap")
    def _without_absent_callback(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("callback") is None:
            data.pop("callback", None)
        return data


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]]
