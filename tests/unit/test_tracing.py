"""Trace context: taken from a task's kwargs or headers, checked, and continued by a span."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from forwarder.observability import tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_from_kwargs_and_removed_from_them() -> None:
    kwargs: dict[str, Any] = {"traceparent": PARENT, "tracestate": "a=1", "other": 1}
    assert tracing.pop_trace_context(kwargs, SimpleNamespace()) == {
        "traceparent": PARENT,
        "tracestate": "a=1",
    }
    assert kwargs == {"other": 1}


def test_from_message_headers() -> None:
    request = SimpleNamespace(headers={"traceparent": PARENT})
    assert tracing.pop_trace_context({}, request) == {"traceparent": PARENT}
    assert tracing.pop_trace_context({}, SimpleNamespace(traceparent=PARENT)) == {
        "traceparent": PARENT
    }


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        7,
    ],
)
def test_a_malformed_traceparent_is_dropped_with_its_state(bad: object) -> None:
    assert tracing.pop_trace_context({"traceparent": bad, "tracestate": "a=1"}, None) == {}


def test_without_spans_the_headers_pass_through() -> None:
    with tracing.model_call_span("t", {"traceparent": PARENT}) as headers:
        assert headers == {"traceparent": PARENT}


def test_with_spans_the_model_call_continues_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    with tracing.model_call_span("task-1", {"traceparent": PARENT}) as headers:
        sent = headers["traceparent"]
    (span,) = exporter.get_finished_spans()
    trace_id = PARENT.split("-")[1]
    assert span.name == "forwarder.model_call"
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == PARENT.split("-")[2]
    assert span.attributes["forwarder.task_id"] == "task-1"
    # The model server is told the span's own id, in the same trace.
    assert sent.split("-")[1] == trace_id
    assert sent.split("-")[2] == format(span.context.span_id, "016x")


def test_enable_spans_finds_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_tracer", None)
    assert tracing.enable_spans() is True
    assert tracing._tracer is not None
