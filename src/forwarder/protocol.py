"""What the forwarder writes where others read it: task names, kwargs, states and stored keys.

Everything here is plain strings, importable before celery (the gevent switch loads first) and
shared by the worker, the client, the gateway and the CLI. The task names, the kwarg keys and the
states are what clients and existing tools send and read; the key prefixes name what is stored in
the result backend beside Celery's ``celery-task-meta-<task id>``, all in the one dash style, so
a stored key reads as ``forwarder-<what>-<id>``.
"""

from __future__ import annotations

__all__ = [
    "CALLBACKS_QUEUE_SUFFIX",
    "CALLBACK_STATE_KEY_PREFIX",
    "CANCELED",
    "CANCEL_KEY_PREFIX",
    "DEAD_LETTER_SUFFIX",
    "DELIVERIES_KEY_PREFIX",
    "DELIVER_TASK_NAME",
    "EXPIRED",
    "FAILURE",
    "FINAL_STATES",
    "IDEMPOTENCY_KEY_PREFIX",
    "LEGACY_TASK_NAME",
    "LIRA_TASK_NAME",
    "PARKED_CALLBACKS_SUFFIX",
    "STOPPED_STATES",
    "SUBMITTED_KWARG",
    "SUCCESS",
    "TASK_NAMES",
    "TIMEOUT",
    "TIMEOUT_KWARG",
    "TRACE_KEYS",
    "TTL_KWARG",
    "callback_state_key_name",
    "cancel_key_name",
    "deliveries_key_name",
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

# Final states: Celery's two, and those of a task ended without a model reply.
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
EXPIRED = "EXPIRED"
TIMEOUT = "TIMEOUT"
CANCELED = "CANCELED"
STOPPED_STATES = frozenset({EXPIRED, TIMEOUT, CANCELED})
FINAL_STATES = frozenset({SUCCESS, FAILURE, *STOPPED_STATES})

# Keys in the result backend's key/value store, each followed by a task id.
CANCEL_KEY_PREFIX = "forwarder-cancel-"
DELIVERIES_KEY_PREFIX = "forwarder-deliveries-"
# A task's callback delivery state (pending, delivered, failed), beside its result.
CALLBACK_STATE_KEY_PREFIX = "forwarder-callback-"
# Followed by a hash of the caller's key, in the store beside the results.
IDEMPOTENCY_KEY_PREFIX = "forwarder-idempotency-"
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
