"""Sinks for the logging hook's records: ``file`` (JSON lines) and ``firehose``."""

from __future__ import annotations

from dataclasses import replace

from forwarder.config.hooks import SINK_NAMES
from forwarder.config.settings import Settings
from forwarder.hooks.sinks.base import Sink, SinkCounts

__all__ = ["SINK_NAMES", "Sink", "SinkCounts", "build_sink"]

DEFAULT_FILE_NAME = "hook-records.jsonl"


def build_sink(settings: Settings) -> Sink:
    """The sink ``logging.sink`` names, configured from the settings."""
    logging = settings.hooks.logging
    if logging.sink == "file":
        from forwarder.hooks.sinks.file import FileSink

        return FileSink(logging.path or settings.worker.data_dir / DEFAULT_FILE_NAME)
    if logging.sink == "firehose":
        from forwarder.hooks.sinks.firehose import FirehoseSink

        region = logging.region or settings.aws.region
        return FirehoseSink(
            replace(logging, region=region),
            max_pool_connections=settings.firehose_max_pool_connections,
        )
    raise ValueError(f"unknown sink {logging.sink!r}; known: {', '.join(SINK_NAMES)}")
