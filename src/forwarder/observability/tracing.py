"""W3C trace context: taken from the task, passed on to the model server and the callback.

A task may carry ``traceparent`` / ``tracestate`` in its kwargs (model-engine's gateways put trace
headers there) or as message headers. The worker sends them on with the model call and the
callback, so a trace spans the gateway, the model server and the receiver. With OpenTelemetry
installed and tracing enabled, the model call is also a span, child of the task's context, and
the headers sent carry that span instead; otherwise nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from forwarder.protocol import TRACE_KEYS

__all__ = ["enable_spans", "model_call_span", "pop_trace_context"]

# version-traceid-parentid-flags; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

_tracer: Any = None


def pop_trace_context(kwargs: dict[str, Any], request: Any) -> dict[str, str]:
    """The task's trace headers, from its kwargs (removed from them) or its message headers.

    A malformed ``traceparent`` is dropped (with its ``tracestate``): passing it on would break
    the receiver's trace, not start one.
    """
    found = {key: kwargs.pop(key) for key in TRACE_KEYS if key in kwargs}
    for key in TRACE_KEYS:
        if key not in found:
            value = getattr(request, key, None)
            if value is None and isinstance(getattr(request, "headers", None), Mapping):
                value = request.headers.get(key)
            if value is not None:
                found[key] = value
    parent = found.get("traceparent")
    if not isinstance(parent, str) or not _TRACEPARENT.match(parent.strip().lower()):
        return {}
    headers = {"traceparent": parent.strip().lower()}
    state = found.get("tracestate")
    if isinstance(state, str) and state.strip():
        headers["tracestate"] = state.strip()
    return headers


def enable_spans() -> bool:
    """Record the model call as an OpenTelemetry span; False when OpenTelemetry is missing."""
    global _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    _tracer = trace.get_tracer("forwarder")
    return True


@contextlib.contextmanager
def model_call_span(task_id: str, headers: dict[str, str]) -> Iterator[dict[str, str]]:
    """The headers to send with the model call, inside a span when spans are enabled."""
    if _tracer is None:
        yield headers
        return
    from opentelemetry import propagate

    parent = propagate.extract(headers)
    with _tracer.start_as_current_span(
        "forwarder.model_call", context=parent, attributes={"forwarder.task_id": task_id}
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield {**headers, **carrier}
