"""What the forwarder writes where others read it: task names, kwargs, states and stored keys.

Everything here is plain strings, importable before celery (the gevent switch loads first) and
shared by the worker, the client, the gateway and the CLI. The task names, the kwarg keys and the
states are what clients and existing tools send and read; the key prefixes name what is stored in
the result backend beside Celery's ``celery-task-meta-<task id>``, all in the one dash style, so
a stored key reads as ``forwarder-<what>-<id>``.
"""

from __future__ import annotations

import re

__all__ = [
    "CALLBACKS_QUEUE_SUFFIX",
    "CALLBACK_STATE_KEY_PREFIX",
    "CANCELED",
    "CANCEL_KEY_PREFIX",
    "COMPLETED_STATES",
    "DEAD_LETTER_SUFFIX",
    "DELIVERIES_KEY_PREFIX",
    "DELIVER_TASK_NAME",
    "EVENTS_KEY_PREFIX",
    "EXPIRED",
    "FAILURE",
    "FINAL_STATES",
    "IDEMPOTENCY_KEY_PREFIX",
    "LEGACY_TASK_NAME",
    "LIRA_TASK_NAME",
    "MODEL_STATUS_ATTRIBUTE",
    "OWNER_KEY_PREFIX",
    "PARKED_CALLBACKS_SUFFIX",
    "STOPPED_STATES",
    "SUBMITTED_KWARG",
    "SUCCESS",
    "TAKEN_KEY_PREFIX",
    "TASK_ID_ALLOWED",
    "TASK_NAMES",
    "TIMEOUT",
    "TIMEOUT_KWARG",
    "TRACE_KEYS",
    "TTL_KWARG",
    "callback_state_key_name",
    "cancel_key_name",
    "deliveries_key_name",
    "events_key_name",
    "owner_key_name",
    "task_id_problem",
]

# model-engine's two names for the one task.
LIRA_TASK_NAME = "ml_serve.celery_service.exec_func"
LEGACY_TASK_NAME = "hosted_model_inference.inference.async_inference.tasks.predict"
TASK_NAMES = (LIRA_TASK_NAME, LEGACY_TASK_NAME)
# The forwarder's own task: one attempt to deliver one task's callback.
DELIVER_TASK_NAME = "forwarder.deliver_callback"

# The task's kwargs the worker reads (its args stay model-engine's [payload, arrival_timestamp]).
TTL_KWARG = "ttl_seconds"
TIMEOUT_KWARG = "timeout_seconds"
SUBMITTED_KWARG = "submitted_at"  # UTC epoch seconds of the send
# W3C trace context, in the kwargs (model-engine's gateways) or the message headers.
TRACE_KEYS = ("traceparent", "tracestate")
# Where a running task's request keeps the model's HTTP status, for its "succeeded" log line.
MODEL_STATUS_ATTRIBUTE = "forwarder_model_status"

# Final states: Celery's two, and those of a task ended without a model reply.
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
EXPIRED = "EXPIRED"
TIMEOUT = "TIMEOUT"
CANCELED = "CANCELED"
STOPPED_STATES = frozenset({EXPIRED, TIMEOUT, CANCELED})
FINAL_STATES = frozenset({SUCCESS, FAILURE, *STOPPED_STATES})
# The final states a worker stores once a delivery has run: a redelivery finding one is
# acknowledged and not run again. Not CANCELED: a client stores it for a task still queued, and
# the worker that then takes the message still ends it (with its hooks).
COMPLETED_STATES = frozenset({SUCCESS, FAILURE, EXPIRED, TIMEOUT})

# Keys in the result backend's key/value store, each followed by a task id.
CANCEL_KEY_PREFIX = "forwarder-cancel-"
DELIVERIES_KEY_PREFIX = "forwarder-deliveries-"
# A task's event log: a Redis stream, a JSON-lines file, or a folder of S3 objects.
EVENTS_KEY_PREFIX = "forwarder-events-"
# Which gateway caller (a hash of its token, never the token) submitted the task.
OWNER_KEY_PREFIX = "forwarder-owner-"
# A task's callback delivery state (pending, delivered, failed), beside its result.
CALLBACK_STATE_KEY_PREFIX = "forwarder-callback-"
# Followed by a hash of the caller's key, in the store beside the results.
IDEMPOTENCY_KEY_PREFIX = "forwarder-idempotency-"
# In the Redis broker, followed by a consumer's id: the delivery tags of its last take.
TAKEN_KEY_PREFIX = "forwarder-taken-"
# The dead-letter queue's name is the work queue's with this after it (before a FIFO's .fifo);
# a dash, not a dot: kombu's SQS transport would turn a dot into one anyway.
DEAD_LETTER_SUFFIX = "-dead-letter"
# The work queue's name with these after it: its callbacks' delivery jobs, and the failed ones
# kept for a redelivery.
CALLBACKS_QUEUE_SUFFIX = "-callbacks"
PARKED_CALLBACKS_SUFFIX = "-callbacks-failed"


def cancel_key_name(task_id: str) -> str:
    """The cancel marker a client stores for ``task_id``."""
    return f"{CANCEL_KEY_PREFIX}{task_id}"


def callback_state_key_name(task_id: str) -> str:
    """The delivery state of ``task_id``'s callback."""
    return f"{CALLBACK_STATE_KEY_PREFIX}{task_id}"


def deliveries_key_name(task_id: str, retries: int) -> str:
    """The count of deliveries of one message of ``task_id`` (a retry is a new message)."""
    return f"{DELIVERIES_KEY_PREFIX}{task_id}-{retries}"


# A task id names a file (the embedded result backend) and is part of every stored key: letters,
# digits and ``-_.:``, not starting with a dot, at most 200 (a file name's 255 less the longest
# key prefix); a uuid fits.
_TASK_ID = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,199}")
TASK_ID_ALLOWED = "1 to 200 of A-Z a-z 0-9 - _ . :, not starting with a dot"


def task_id_problem(task_id: object) -> str | None:
    """Why ``task_id`` cannot name a task's stored result, or None when it can."""
    if isinstance(task_id, str) and _TASK_ID.fullmatch(task_id):
        return None
    shown = repr(task_id) if len(repr(task_id)) <= 80 else f"{repr(task_id)[:80]}..."
    return f"task id {shown} is not allowed (allowed: {TASK_ID_ALLOWED})"


def events_key_name(task_id: str) -> str:
    """Where ``task_id``'s event log is kept, beside its result."""
    return f"{EVENTS_KEY_PREFIX}{task_id}"


def owner_key_name(task_id: str) -> str:
    """The record of which gateway caller submitted ``task_id``."""
    return f"{OWNER_KEY_PREFIX}{task_id}"
