"""``forwarder submit | get | cancel | watch``: tasks, through the broker or a gateway.

Like ``forwarder.cli.commands``, nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from forwarder.cli.flags import add_settings_flags, settings_from
from forwarder.config.parsers import Invalid, positive_number
from forwarder.config.schema import CLIENT, flags_for
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError

if TYPE_CHECKING:
    from forwarder.client.broker import ForwarderClient, TaskResult
    from forwarder.client.gateway import GatewayClient

__all__ = ["add_commands", "cmd_cancel", "cmd_get", "cmd_submit", "cmd_watch"]


def _read_payload(args: argparse.Namespace) -> dict[str, Any]:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("payload", text[:80], f"a JSON object ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise ConfigError("payload", text[:80], "a JSON object")
    return payload


def _seconds(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return positive_number(value)
    except Invalid as exc:
        raise ConfigError(flag, value, str(exc)) from None


def _gateway_target(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None] | None:
    """The gateway URL and token; None: talk to the broker.

    ``--gateway-url`` with broker settings is an error. ``FORWARDER_GATEWAY_URL`` gives way to
    broker settings on the command line (flags, ``--config``, ``--set``), as the environment
    gives way to flags everywhere else; ``client.gateway_url`` in the file gives way to broker
    flags.
    """
    client = settings.client
    if client.gateway_url is None:
        return None
    source = settings.sources["client.gateway_url"]
    from_file = source == "client.gateway_url"
    flags = [
        setting.flag
        for setting in flags_for("tasks")
        if setting.section is not CLIENT and getattr(args, setting.dest, None)
    ]
    files = ["--config"] * bool(args.config) + ["--set"] * bool(args.set)
    if source == "--gateway-url":
        if flags or files:
            raise ConfigError(
                (flags or files)[0],
                "given with --gateway-url",
                "a gateway URL or broker settings, not both",
            )
    elif flags or (files and not from_file):
        return None
    return client.gateway_url, client.gateway_token


def _print_result(result: TaskResult) -> None:
    print(json.dumps(result.as_dict(), indent=2))


def cmd_submit(args: argparse.Namespace) -> int:
    payload = _read_payload(args)
    ttl = _seconds("--ttl", args.ttl)
    timeout = _seconds("--timeout", args.timeout)
    settings = settings_from(args)
    target = _gateway_target(args, settings)
    if target is not None:
        if args.legacy_task_name:
            raise ConfigError("--legacy-task-name", True, "broker mode only (no --gateway-url)")
        from forwarder.client.gateway import GatewayClient

        with GatewayClient(*target) as gateway:
            task_id = gateway.submit(
                payload,
                ttl_seconds=ttl,
                timeout_seconds=timeout,
                idempotency_key=args.idempotency_key,
            )
            result = None if args.wait is None else gateway.wait(task_id, timeout=args.wait)
    else:
        result, task_id = _submit_to_broker(args, settings, payload, ttl, timeout)
    if result is None:
        print(task_id)
        return 0
    _print_result(result)
    return 0 if result.status == "SUCCESS" else 1


def _submit_to_broker(
    args: argparse.Namespace,
    settings: Settings,
    payload: dict[str, Any],
    ttl: float | None,
    timeout: float | None,
) -> tuple[TaskResult | None, str]:
    from forwarder.client.broker import ForwarderClient
    from forwarder.protocol import LEGACY_TASK_NAME, LIRA_TASK_NAME

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
            from forwarder.client.idempotency import (
                fingerprint,
                open_store,
                scoped_key,
                submit_once,
            )

            request = {**payload, "ttl_seconds": ttl, "timeout_seconds": timeout}
            store = open_store(settings)
            try:
                task_id, _ = submit_once(
                    store,
                    scoped_key(args.idempotency_key),
                    fingerprint(request),
                    settings.gateway.idempotency_retention_seconds,
                    send,
                    settings.gateway.idempotency_lease_seconds,
                )
            finally:
                store.close()
        result = None if args.wait is None else client.wait(task_id, timeout=args.wait)
    return result, task_id


def _reader(args: argparse.Namespace) -> GatewayClient | ForwarderClient:
    """A client of the gateway (``--gateway-url`` or its variable), else of the broker."""
    settings = settings_from(args)
    target = _gateway_target(args, settings)
    if target is not None:
        from forwarder.client.gateway import GatewayClient

        return GatewayClient(*target)
    from forwarder.client.broker import ForwarderClient

    return ForwarderClient(settings)


def cmd_get(args: argparse.Namespace) -> int:
    with _reader(args) as client:
        result = client.wait(args.task_id, args.wait) if args.wait else client.get(args.task_id)
    _print_result(result)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _reader(args) as client:
        result = client.cancel(args.task_id)
    _print_result(result)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Print the task's events as JSON lines as they come; exit 0 if it ends SUCCESS."""
    status = None
    with _reader(args) as client:
        for event in client.events(args.task_id, after=args.after, timeout=args.timeout):
            print(json.dumps(event.as_dict()), flush=True)
            if event.final:
                status = json.loads(event.data).get("status")
    return 0 if status == "SUCCESS" else 1


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = commands.add_parser("submit", help="submit a task; prints its id")
    add_settings_flags(submit, "tasks")
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
    submit.set_defaults(run=cmd_submit)

    get = commands.add_parser("get", help="print a task's state and result")
    add_settings_flags(get, "tasks")
    get.add_argument("task_id")
    get.add_argument("--wait", type=float, metavar="SECONDS", help="wait until it is done")
    get.set_defaults(run=cmd_get)

    cancel = commands.add_parser("cancel", help="cancel a task; prints its state")
    add_settings_flags(cancel, "tasks")
    cancel.add_argument("task_id")
    cancel.set_defaults(run=cmd_cancel)

    watch = commands.add_parser(
        "watch", help="print a task's events (its streamed chunks, then its state) live"
    )
    add_settings_flags(watch, "tasks")
    watch.add_argument("task_id")
    watch.add_argument("--after", metavar="EVENT_ID", help="start after this event id")
    watch.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up if it has not ended by then"
    )
    watch.set_defaults(run=cmd_watch)
