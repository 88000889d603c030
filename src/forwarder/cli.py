"""``forwarder worker | gateway | submit | get | cancel | dead-letter | demo | echo-server |
check-config``.

This module imports only the standard library, PyYAML and the settings: the worker command must be
able to patch for gevent before celery or requests are imported.

Bad settings end the command with exit status 2 and one line naming the key, the value and what
is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import yaml

from forwarder._parse import Invalid, http_url, positive_number
from forwarder.errors import ConfigError, ForwarderError
from forwarder.gateway_settings import masked_gateway_document
from forwarder.hook_settings import masked_document
from forwarder.pool_switch import patch_gevent
from forwarder.settings import Settings, load_settings, mask_url

if TYPE_CHECKING:
    from forwarder.client import ForwarderClient, TaskResult
    from forwarder.gateway_client import GatewayClient

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
        _add_dead_letter_queue_flag(parser)


def _add_dead_letter_queue_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dead-letter-queue", help="where crash-looping tasks go (default: QUEUE-dead-letter)"
    )


def _add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway-url",
        metavar="URL",
        help=f"talk to this gateway instead of the broker (env {GATEWAY_URL_ENV})",
    )
    parser.add_argument("--token", help=f"the gateway's bearer token (env {GATEWAY_TOKEN_ENV})")


def _settings(args: argparse.Namespace) -> Settings:
    given = {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in _SETTINGS_FLAGS}
    flags = {flag: value for flag, value in given.items() if value is not None}
    return load_settings(args.config, args.set, flags=flags)


def _configure_logging(settings: Settings) -> None:
    from forwarder.logs import configure

    configure(settings.worker.log_level, settings.worker.log_format, settings.worker.queue)


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.worker.pool == "gevent":
        patch_gevent()
    _configure_logging(settings)
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
        **masked_gateway_document(settings.gateway),
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


def _cmd_gateway(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    from forwarder.gateway import run_gateway

    return run_gateway(settings)


def _seconds(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return positive_number(value)
    except Invalid as exc:
        raise ConfigError(flag, value, str(exc)) from None


def _gateway_target(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """The gateway URL and token; None: talk to the broker.

    ``--gateway-url`` with broker settings is an error; ``FORWARDER_GATEWAY_URL`` gives way to
    them, as the environment gives way to flags everywhere else.
    """
    given = [flag for flag in _SETTINGS_FLAGS if getattr(args, flag[2:].replace("-", "_"), None)]
    given += ["--config"] * bool(args.config) + ["--set"] * bool(args.set)
    if args.gateway_url is not None:
        url, key = args.gateway_url, "--gateway-url"
        if given:
            raise ConfigError(
                given[0], "given with --gateway-url", "a gateway URL or broker settings, not both"
            )
    elif os.environ.get(GATEWAY_URL_ENV, "").strip() and not given:
        url, key = os.environ[GATEWAY_URL_ENV].strip(), GATEWAY_URL_ENV
    else:
        return None
    try:
        url = http_url(url)
    except Invalid:
        raise ConfigError(key, url, "an http(s) URL, for example http://127.0.0.1:8000") from None
    token = args.token or os.environ.get(GATEWAY_TOKEN_ENV, "").strip() or None
    return url, token


def _print_result(result: TaskResult) -> None:
    print(json.dumps(result.as_dict(), indent=2))


def _cmd_submit(args: argparse.Namespace) -> int:
    payload = _read_payload(args)
    ttl = _seconds("--ttl", args.ttl)
    timeout = _seconds("--timeout", args.timeout)
    target = _gateway_target(args)
    if target is not None:
        if args.legacy_task_name:
            raise ConfigError("--legacy-task-name", True, "broker mode only (no --gateway-url)")
        from forwarder.gateway_client import GatewayClient

        with GatewayClient(*target) as gateway:
            task_id = gateway.submit(
                payload,
                ttl_seconds=ttl,
                timeout_seconds=timeout,
                idempotency_key=args.idempotency_key,
            )
            result = None if args.wait is None else gateway.wait(task_id, timeout=args.wait)
    else:
        result, task_id = _submit_to_broker(args, payload, ttl, timeout)
    if result is None:
        print(task_id)
        return 0
    _print_result(result)
    return 0 if result.status == "SUCCESS" else 1


def _submit_to_broker(
    args: argparse.Namespace, payload: dict[str, Any], ttl: float | None, timeout: float | None
) -> tuple[TaskResult | None, str]:
    from forwarder.client import ForwarderClient
    from forwarder.worker import LEGACY_TASK_NAME, LIRA_TASK_NAME

    settings = _settings(args)
    task_name = LEGACY_TASK_NAME if args.legacy_task_name else LIRA_TASK_NAME
    with ForwarderClient(settings) as client:

        def send(task_id: str | None) -> str:
            return client.submit(
                payload,
                task_name=task_name,
                ttl_seconds=ttl,
                timeout_seconds=timeout,
                task_id=task_id,
            )

        if args.idempotency_key is None:
            task_id = send(None)
        else:
            from forwarder.idempotency import fingerprint, open_store, scoped_key, submit_once

            request = {**payload, "ttl_seconds": ttl, "timeout_seconds": timeout}
            store = open_store(settings)
            try:
                task_id, _ = submit_once(
                    store,
                    scoped_key(args.idempotency_key),
                    fingerprint(request),
                    settings.gateway.idempotency_retention_seconds,
                    send,
                )
            finally:
                store.close()
        result = None if args.wait is None else client.wait(task_id, timeout=args.wait)
    return result, task_id


def _reader(args: argparse.Namespace) -> GatewayClient | ForwarderClient:
    """A client of the gateway (``--gateway-url`` or its variable), else of the broker."""
    target = _gateway_target(args)
    if target is not None:
        from forwarder.gateway_client import GatewayClient

        return GatewayClient(*target)
    from forwarder.client import ForwarderClient

    return ForwarderClient(_settings(args))


def _cmd_get(args: argparse.Namespace) -> int:
    with _reader(args) as client:
        result = client.wait(args.task_id, args.wait) if args.wait else client.get(args.task_id)
    _print_result(result)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _reader(args) as client:
        result = client.cancel(args.task_id)
    _print_result(result)
    return 0


def _cmd_dead_letter_list(args: argparse.Namespace) -> int:
    from forwarder.dead_letter_queue import open_dead_letters

    store = open_dead_letters(_settings(args))
    try:
        for shown, entry in enumerate(store.entries()):
            if args.limit is not None and shown >= args.limit:
                break
            if entry.letter is None:
                line: dict[str, Any] = {"not_a_dead_letter": entry.problem}
            else:
                line = entry.letter.summary(show_payload=args.show_payload)
            print(json.dumps(line, default=str))
    finally:
        store.close()
    return 0


def _cmd_dead_letter_replay(args: argparse.Namespace) -> int:
    if bool(args.task_ids) == args.all:
        raise ConfigError("replay", args.task_ids, "task ids or --all, one of the two")
    from forwarder.client import ForwarderClient
    from forwarder.dead_letter_queue import open_dead_letters, replay

    settings = _settings(args)
    wanted = None if args.all else set(args.task_ids)
    store = open_dead_letters(settings)
    try:
        with ForwarderClient(settings) as client:
            sent = replay(client.app, store, wanted)
    finally:
        store.close()
    for letter in sent:
        print(json.dumps({"task_id": letter.task_id, "queue": letter.queue, "replayed": True}))
    missing = sorted((wanted or set()) - {letter.task_id for letter in sent})
    for task_id in missing:
        sys.stderr.write(f"forwarder: {task_id} is not on the dead-letter queue\n")
    return 1 if missing else 0


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

    gateway = commands.add_parser("gateway", help="serve the HTTP API (FastAPI + uvicorn)")
    _add_settings_flags(gateway, worker=False)
    gateway.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", help="port to listen on (default 8000; 0 picks a free one)")
    gateway.set_defaults(run=_cmd_gateway)

    submit = commands.add_parser("submit", help="submit a task; prints its id")
    _add_settings_flags(submit, worker=False)
    _add_gateway_flags(submit)
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
    submit.set_defaults(run=_cmd_submit)

    get = commands.add_parser("get", help="print a task's state and result")
    _add_settings_flags(get, worker=False)
    _add_gateway_flags(get)
    get.add_argument("task_id")
    get.add_argument("--wait", type=float, metavar="SECONDS", help="wait until it is done")
    get.set_defaults(run=_cmd_get)

    cancel = commands.add_parser("cancel", help="cancel a task; prints its state")
    _add_settings_flags(cancel, worker=False)
    _add_gateway_flags(cancel)
    cancel.add_argument("task_id")
    cancel.set_defaults(run=_cmd_cancel)

    dead_letter = commands.add_parser(
        "dead-letter", help="list or replay the tasks that kept killing their worker"
    )
    actions = dead_letter.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the dead letters as JSON lines, oldest first")
    listing.add_argument("--limit", type=int, metavar="N", help="print at most N")
    listing.add_argument(
        "--show-payload", action="store_true", help="include args and kwargs (user data)"
    )
    listing.set_defaults(run=_cmd_dead_letter_list)
    replaying = actions.add_parser("replay", help="send dead letters back to their queue")
    replaying.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    replaying.set_defaults(run=_cmd_dead_letter_replay)
    for action in (listing, replaying):
        _add_settings_flags(action, worker=False)
        _add_dead_letter_queue_flag(action)

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
