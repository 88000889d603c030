"""``forwarder worker | gateway | submit | get | cancel | dead-letter | demo | echo-server |
check-config``.

This module imports only the standard library, PyYAML and the settings: the worker command must be
able to patch for gevent before celery or requests are imported.

Bad settings end the command with exit status 2 and one line naming the key, the value and what
is allowed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import yaml

from forwarder.cli import tasks as cli_tasks
from forwarder.cli.flags import (
    add_dead_letter_queue_flag,
    add_gateway_flags,
    add_settings_flags,
    settings_from,
)
from forwarder.config.gateway import masked_gateway_document
from forwarder.config.hooks import masked_document
from forwarder.config.settings import Settings, mask_url
from forwarder.errors import ConfigError, ForwarderError
from forwarder.worker.gevent_switch import patch_gevent

if TYPE_CHECKING:
    pass

__all__ = ["main"]


def _configure_logging(settings: Settings) -> None:
    from forwarder.observability.logs import configure

    configure(settings.worker.log_level, settings.worker.log_format, settings.worker.queue)


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.worker.pool == "gevent":
        patch_gevent()
    _configure_logging(settings)
    from forwarder.worker.app import run_worker

    return run_worker(settings)


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Print the settings as a config file would hold them, then what they select, as comments."""
    settings = settings_from(args)
    from forwarder.celery_ext.brokers import broker_config

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
        **masked_gateway_document(settings.gateway),
    }
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    sys.stdout.write(
        f"# broker: {config.kind} ({mask_url(config.broker_url)})\n"
        f"# results: {mask_url(config.result_backend)}\n"
        f"# visibility timeout: {settings.worker.visibility_timeout} s\n"
    )
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _configure_logging(settings)
    from forwarder.gateway.app import run_gateway

    return run_gateway(settings)


def _cmd_echo_server(args: argparse.Namespace) -> int:
    from forwarder.devtools.echo_server import make_server, serve

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
    from forwarder.devtools.demo import run_demo

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
    add_settings_flags(worker, worker=True)
    worker.set_defaults(run=_cmd_worker)

    check = commands.add_parser("check-config", help="validate settings and print them (masked)")
    add_settings_flags(check, worker=True)
    check.set_defaults(run=_cmd_check_config)

    gateway = commands.add_parser("gateway", help="serve the HTTP API (FastAPI + uvicorn)")
    add_settings_flags(gateway, worker=False)
    gateway.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", help="port to listen on (default 8000; 0 picks a free one)")
    gateway.set_defaults(run=_cmd_gateway)

    submit = commands.add_parser("submit", help="submit a task; prints its id")
    add_settings_flags(submit, worker=False)
    add_gateway_flags(submit)
    submit.add_argument("payload", help="JSON object, or - to read it from standard input")
    submit.add_argument("--wait", type=float, metavar="SECONDS", help="wait and print the result")
    submit.add_argument(
        "--ttl", metavar="SECONDS", help="longest wait in the queue; then it ends EXPIRED"
    )
    submit.add_argument(
        "--timeout", metavar="SECONDS", help="longest model call; then it ends TIMEOUT"
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key within the retention window returns the same task id",
    )
    submit.add_argument(
        "--legacy-task-name", action="store_true", help="send under the pre-LIRA task name"
    )
    submit.set_defaults(run=cli_tasks.cmd_submit)

    get = commands.add_parser("get", help="print a task's state and result")
    add_settings_flags(get, worker=False)
    add_gateway_flags(get)
    get.add_argument("task_id")
    get.add_argument("--wait", type=float, metavar="SECONDS", help="wait until it is done")
    get.set_defaults(run=cli_tasks.cmd_get)

    cancel = commands.add_parser("cancel", help="cancel a task; prints its state")
    add_settings_flags(cancel, worker=False)
    add_gateway_flags(cancel)
    cancel.add_argument("task_id")
    cancel.set_defaults(run=cli_tasks.cmd_cancel)

    dead_letter = commands.add_parser(
        "dead-letter", help="list or replay the tasks that kept killing their worker"
    )
    actions = dead_letter.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the dead letters as JSON lines, oldest first")
    listing.add_argument("--limit", type=int, metavar="N", help="print at most N")
    listing.add_argument(
        "--show-payload", action="store_true", help="include args and kwargs (user data)"
    )
    listing.set_defaults(run=cli_tasks.cmd_dead_letter_list)
    replaying = actions.add_parser("replay", help="send dead letters back to their queue")
    replaying.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    replaying.set_defaults(run=cli_tasks.cmd_dead_letter_replay)
    for action in (listing, replaying):
        add_settings_flags(action, worker=False)
        add_dead_letter_queue_flag(action)

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
    except ModuleNotFoundError as exc:
        if exc.name in ("fastapi", "uvicorn", "starlette", "pydantic", "anyio"):
            sys.stderr.write(f"forwarder: {exc}\n")  # the gateway's install hint
            return 2
        raise
    except ForwarderError as exc:
        sys.stderr.write(f"forwarder: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
