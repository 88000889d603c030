"""The logging hook: a record of each task's request and response, handed to a sink.

The record has model-engine's fields, so existing consumers of the stream read it unchanged. The
request is carried as the JSON text model-engine sent, with callback credentials masked: a
record may be kept for years by whoever reads the stream.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from forwarder.config.hooks import EndpointInfo
from forwarder.config.masking import masked_request
from forwarder.hooks.base import Hook, TaskOutcome
from forwarder.hooks.sinks.base import Sink

__all__ = ["LoggingHook", "build_record"]


def build_record(
    outcome: TaskOutcome, endpoint: EndpointInfo, now: datetime | None = None
) -> dict[str, Any]:
    emitted_at = (now or datetime.now(UTC)).astimezone(UTC)
    return {
        "EMITTED_AT": emitted_at.strftime("%Y-%m-%dT%H:%M:%S"),
        "REQUEST_BODY": json.dumps(masked_request(outcome.request), default=str),
        "RESPONSE_BODY": outcome.response_body(),
        "ENDPOINT_ID": endpoint.id,
        "ENDPOINT_NAME": endpoint.name,
        "ENDPOINT_TYPE": endpoint.type,
        "BUNDLE_ID": endpoint.bundle_id,
        "LABELS": dict(endpoint.labels),
    }


class LoggingHook(Hook):
    name = "logging"

    def __init__(self, endpoint: EndpointInfo, sink: Sink) -> None:
        self.endpoint = endpoint
        self.sink = sink

    def __call__(self, outcome: TaskOutcome) -> None:
        self.sink.put(build_record(outcome, self.endpoint))

    def close(self) -> None:
        self.sink.close()
