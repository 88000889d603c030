"""The command line's settings flags, and the one ``Settings`` a command builds from them.

Imports only the standard library, PyYAML and the settings, like ``forwarder.cli.commands``.
"""

from __future__ import annotations

import argparse

from forwarder.config.settings import Settings, load_settings

__all__ = [
    "GATEWAY_TOKEN_ENV",
    "GATEWAY_URL_ENV",
    "SETTINGS_FLAGS",
    "add_dead_letter_queue_flag",
    "add_gateway_flags",
    "add_settings_flags",
    "settings_from",
]

# Flags that map one-to-one onto settings; everything else on a command line is the command's own.
SETTINGS_FLAGS = (
    "--queue",
    "--concurrency",
    "--pool",
    "--broker-url",
    "--result-backend",
    "--sqs-url",
    "--data-dir",
    "--task-visibility",
    "--log-level",
    "--log-format",
    "--metrics-port",
    "--metrics-host",
    "--tracing",
    "--max-deliveries",
    "--dead-letter-queue",
    "--host",
    "--port",
)
GATEWAY_URL_ENV = "FORWARDER_GATEWAY_URL"
GATEWAY_TOKEN_ENV = "FORWARDER_GATEWAY_TOKEN"


def add_settings_flags(parser: argparse.ArgumentParser, *, worker: bool) -> None:
    parser.add_argument("--config", help="YAML file (model-engine layout accepted as is)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="override a config key"
    )
    parser.add_argument("--queue", help="queue name")
    parser.add_argument("--broker-url", help="redis://... (default: embedded, no server)")
    parser.add_argument(
        "--result-backend",
        help="redis://..., file://... or s3://BUCKET[/PREFIX][?checksum=sha256] for results",
    )
    parser.add_argument("--sqs-url", help="SQS queue URL (SQS broker; needs --result-backend)")
    parser.add_argument("--data-dir", help="folder of the embedded broker and results")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", help="json (default) or text")
    if worker:
        parser.add_argument("--concurrency", "--num-workers", dest="concurrency")
        parser.add_argument("--pool", help="prefork (default) or gevent")
        parser.add_argument(
            "--task-visibility",
            help="VISIBILITY_1M, VISIBILITY_10M, VISIBILITY_1H or VISIBILITY_24H",
        )
        parser.add_argument("--metrics-port", help="serve Prometheus metrics on this port")
        parser.add_argument("--metrics-host", help="address of the metrics endpoint (0.0.0.0)")
        parser.add_argument("--tracing", help="off (default) or otel: model calls as spans")
        parser.add_argument(
            "--max-deliveries",
            help="deliveries that did not finish before a task is dead-lettered (5)",
        )
        add_dead_letter_queue_flag(parser)


def add_dead_letter_queue_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dead-letter-queue", help="where crash-looping tasks go (default: QUEUE-dead-letter)"
    )


def add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway-url",
        metavar="URL",
        help=f"talk to this gateway instead of the broker (env {GATEWAY_URL_ENV})",
    )
    parser.add_argument("--token", help=f"the gateway's bearer token (env {GATEWAY_TOKEN_ENV})")


def settings_from(args: argparse.Namespace) -> Settings:
    given = {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in SETTINGS_FLAGS}
    flags = {flag: value for flag, value in given.items() if value is not None}
    return load_settings(args.config, args.set, flags=flags)
