"""``forwarder worker | submit | get | demo | echo-server | check-config``.

This module imports only the standard library, PyYAML and the settings: the worker command must be
able to patch for gevent before celery or requests are imported.

Bad settings end the command with exit status 2 and one line naming the key, the value and what
is allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import yaml

from forwarder.errors import ConfigError, ForwarderError
from forwarder.hook_settings import masked_document
from forwarder.pool_switch import patch_gevent
from forwarder.settings import Settings, load_settings, mask_url

__all__ = ["main"]

# Flags that map one-to-one onto settings; everything else on a command line is the command's own.
_SETTINGS_FLAGS = (
    "--queue",
    "--concurrency",
    "--pool",
    "--broker-url",
    "--result-backend",
    "--sqs-url",
    "--data-dir",
    "--task-visibility",
    "--log-level",
)


def _add_settings_flags(parser: argparse.ArgumentParser, *, worker: bool) -> None:
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
    if worker:
        parser.add_argument("--concurrency", "--num-workers", dest="concurrency")
        parser.add_argument("--pool", help="prefork (default) or gevent")
        parser.add_argument(
            "--task-visibility",
            help="VISIBILITY_1M, VISIBILITY_10M, VISIBILITY_1H or VISIBILITY_24H",
        )


def _settings(args: argparse.Namespace) -> Settings:
    given = {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in _SETTINGS_FLAGS}
    flags = {flag: value for flag, value in given.items() if value is not None}
    return load_settings(args.config, args.set, flags=flags)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.worker.pool == "gevent":
        patch_gevent()
    _configure_logging(settings.worker.log_level)
    from forwarder.worker import run_worker

    return run_worker(settings)


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Print the settings as a config file would hold them, then what they select, as comments."""
    settings = _settings(args)
    from forwarder.brokers import broker_config

    config = broker_config(settings.worker)
    document: dict[str, Any] = {
        "forwarder": {"async": asdict(settings.model)},
        "worker": {
            **asdict(settings.worker),
            "data_dir": str(settings.worker.data_dir),
            "broker_url": mask_url(settings.worker.broker_url),
            "result_backend": mask_url(settings.worker.result_backend),
        },
        "firehose_max_pool_connections": settings.firehose_max_pool_connections,
        **masked_document(settings.hooks),
    }
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    sys.stdout.write(
        f"# broker: {config.kind} ({mask_url(config.broker_url)})\n"
        f"# results: {mask_url(config.result_backend)}\n"
        f"# visibility timeout: {settings.worker.visibility_timeout} s\n"
    )
    return 0


def _read_payload(args: argparse.Namespace) -> dict[str, Any]:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("payload", text[:80], f"a JSON object ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise ConfigError("payload", text[:80], "a JSON object")
    return payload


def _cmd_submit(args: argparse.Namespace) -> int:
    from forwarder.client import ForwarderClient
    from forwarder.worker import LEGACY_TASK_NAME, LIRA_TASK_NAME

    payload = _read_payload(args)
    task_name = LEGACY_TASK_NAME if args.legacy_task_name else LIRA_TASK_NAME
    with ForwarderClient(_settings(args)) as client:
        task_id = client.submit(payload, task_name=task_name)
        if args.wait is None:
            print(task_id)
            return 0
        result = client.wait(task_id, timeout=args.wait)
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.status == "SUCCESS" else 1


def _cmd_get(args: argparse.Namespace) -> int:
    from forwarder.client import ForwarderClient

    with ForwarderClient(_settings(args)) as client:
        result = client.wait(args.task_id, args.wait) if args.wait else client.get(args.task_id)
    print(json.dumps(result.as_dict(), indent=2))
    return 0


def _cmd_echo_server(args: argparse.Namespace) -> int:
    from forwarder.echo_server import make_server, serve

    serve(
        make_server(
            args.host,
            args.port,
            delay=args.delay,
            ready_after=args.ready_after,
            predict_route=args.predict_route,
            healthcheck_route=args.healthcheck_route,
            verbose=args.verbose,
        )
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from forwarder.demo import run_demo

    return run_demo(
        tasks=args.tasks, pool=args.pool, concurrency=args.concurrency, delay=args.delay
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder", description="Asynchronous inference forwarder on Celery."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker", help="consume tasks and forward them to the model server"
    )
    _add_settings_flags(worker, worker=True)
    worker.set_defaults(run=_cmd_worker)

    check = commands.add_parser("check-config", help="validate settings and print them (masked)")
    _add_settings_flags(check, worker=True)
    check.set_defaults(run=_cmd_check_config)

    submit = commands.add_parser("submit", help="submit a task; prints its id")
    _add_settings_flags(submit, worker=False)
    submit.add_argument("payload", help="JSON object, or - to read it from standard input")
    submit.add_argument("--wait", type=float, metavar="SECONDS", help="wait and print the result")
    submit.add_argument(
        "--legacy-task-name", action="store_true", help="send under the pre-LIRA task name"
    )
    submit.set_defaults(run=_cmd_submit)

    get = commands.add_parser("get", help="print a task's state and result")
    _add_settings_flags(get, worker=False)
    get.add_argument("task_id")
    get.add_argument("--wait", type=float, metavar="SECONDS", help="wait until it is done")
    get.set_defaults(run=_cmd_get)

    echo = commands.add_parser("echo-server", help="a model server that echoes its input")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=5005)
    echo.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    echo.add_argument("--ready-after", type=float, default=0.0, help="seconds until /readyz is 200")
    echo.add_argument("--predict-route", default="/predict")
    echo.add_argument("--healthcheck-route", default="/readyz")
    echo.add_argument("--verbose", action="store_true")
    echo.set_defaults(run=_cmd_echo_server)

    demo = commands.add_parser("demo", help="echo server + worker on the embedded default")
    demo.add_argument("--tasks", type=int, default=50)
    demo.add_argument("--pool", default="prefork", choices=("prefork", "gevent"))
    demo.add_argument("--concurrency", type=int, default=4)
    demo.add_argument("--delay", type=float, default=0.05, help="model latency in seconds")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        sys.stderr.write(f"forwarder: {exc}\n")
        return 2
    except ForwarderError as exc:
        sys.stderr.write(f"forwarder: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
