"""``forwarder callbacks list [--failed] | redeliver ID...|--failed``: queued callback deliveries."""

from __future__ import annotations

import argparse
import json
import sys

from forwarder.cli.flags import add_settings_flags, settings_from
from forwarder.errors import ConfigError

__all__ = ["add_commands", "cmd_callbacks_list", "cmd_callbacks_redeliver"]


def cmd_callbacks_list(args: argparse.Namespace) -> int:
    from forwarder.hooks.deliveries.broker import delivery_app
    from forwarder.hooks.deliveries.control import list_states

    app = delivery_app(settings_from(args), name="forwarder-cli")
    try:
        for state in list_states(app, failed_only=args.failed):
            print(json.dumps(state.as_dict()))
    finally:
        app.close()
    return 0


def cmd_callbacks_redeliver(args: argparse.Namespace) -> int:
    if bool(args.task_ids) == args.failed:
        raise ConfigError("redeliver", args.task_ids, "task ids or --failed, one of the two")
    from forwarder.hooks.deliveries.broker import delivery_app
    from forwarder.hooks.deliveries.control import redeliver

    settings = settings_from(args)
    app = delivery_app(settings, name="forwarder-cli")
    try:
        done = redeliver(settings, app, None if args.failed else args.task_ids)
    finally:
        app.close()
    for state in done.redelivered:
        print(json.dumps({"task_id": state.task_id, "redelivered": True}))
    for task_id in done.not_failed:
        sys.stderr.write(f"forwarder: the callback of {task_id} has not failed; not redelivered\n")
    return 1 if done.not_failed else 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    callbacks = commands.add_parser(
        "callbacks", help="list queued callback deliveries or redeliver failed ones"
    )
    actions = callbacks.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print delivery states as JSON lines")
    listing.add_argument("--failed", action="store_true", help="only the failed ones")
    listing.set_defaults(run=cmd_callbacks_list)
    again = actions.add_parser("redeliver", help="deliver failed callbacks again")
    again.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    again.add_argument("--failed", action="store_true", help="every failed callback")
    again.set_defaults(run=cmd_callbacks_redeliver)
    for action in (listing, again):
        add_settings_flags(action, "callbacks")
