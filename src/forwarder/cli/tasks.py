"""``forwarder submit | get | cancel | dead-letter``: tasks, through the broker or a gateway.

Like ``forwarder.cli.commands``, nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from forwarder.cli.flags import GATEWAY_TOKEN_ENV, GATEWAY_URL_ENV, SETTINGS_FLAGS, settings_from
from forwarder.config.parsers import Invalid, http_url, positive_number
from forwarder.errors import ConfigError

if TYPE_CHECKING:
    from forwarder.client.broker import ForwarderClient, TaskResult
    from forwarder.client.gateway import GatewayClient

__all__ = [
    "cmd_cancel",
    "cmd_dead_letter_list",
    "cmd_dead_letter_replay",
    "cmd_get",
    "cmd_submit",
]


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


def _gateway_target(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """The gateway URL and token; None: talk to the broker.

    ``--gateway-url`` with broker settings is an error; ``FORWARDER_GATEWAY_URL`` gives way to
    them, as the environment gives way to flags everywhere else.
    """
    given = [flag for flag in SETTINGS_FLAGS if getattr(args, flag[2:].replace("-", "_"), None)]
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


def cmd_submit(args: argparse.Namespace) -> int:
    payload = _read_payload(args)
    ttl = _seconds("--ttl", args.ttl)
    timeout = _seconds("--timeout", args.timeout)
    target = _gateway_target(args)
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
        result, task_id = _submit_to_broker(args, payload, ttl, timeout)
    if result is None:
        print(task_id)
        return 0
    _print_result(result)
    return 0 if result.status == "SUCCESS" else 1


def _submit_to_broker(
    args: argparse.Namespace, payload: dict[str, Any], ttl: float | None, timeout: float | None
) -> tuple[TaskResult | None, str]:
    from forwarder.client.broker import ForwarderClient
    from forwarder.protocol import LEGACY_TASK_NAME, LIRA_TASK_NAME

    settings = settings_from(args)
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
                )
            finally:
                store.close()
        result = None if args.wait is None else client.wait(task_id, timeout=args.wait)
    return result, task_id


def _reader(args: argparse.Namespace) -> GatewayClient | ForwarderClient:
    """A client of the gateway (``--gateway-url`` or its variable), else of the broker."""
    target = _gateway_target(args)
    if target is not None:
        from forwarder.client.gateway import GatewayClient

        return GatewayClient(*target)
    from forwarder.client.broker import ForwarderClient

    return ForwarderClient(settings_from(args))


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


def cmd_dead_letter_list(args: argparse.Namespace) -> int:
    from forwarder.client.dead_letters import open_dead_letters

    store = open_dead_letters(settings_from(args))
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


def cmd_dead_letter_replay(args: argparse.Namespace) -> int:
    if bool(args.task_ids) == args.all:
        raise ConfigError("replay", args.task_ids, "task ids or --all, one of the two")
    from forwarder.client.broker import ForwarderClient
    from forwarder.client.dead_letters import open_dead_letters, replay

    settings = settings_from(args)
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
