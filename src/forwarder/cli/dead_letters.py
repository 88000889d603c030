"""``forwarder dead-letter list | replay``: the tasks that kept killing their worker."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from forwarder.cli.flags import add_settings_flags, settings_from
from forwarder.errors import ConfigError

__all__ = ["add_commands", "cmd_dead_letter_list", "cmd_dead_letter_replay"]


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
                line = entry.letter.summary(
                    show_payload=args.show_payload, show_secrets=args.show_secrets
                )
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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dead_letter = commands.add_parser(
        "dead-letter", help="list or replay the tasks that kept killing their worker"
    )
    actions = dead_letter.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the dead letters as JSON lines, oldest first")
    listing.add_argument("--limit", type=int, metavar="N", help="print at most N")
    listing.add_argument(
        "--show-payload", action="store_true", help="include args and kwargs (user data)"
    )
    listing.add_argument(
        "--show-secrets",
        action="store_true",
        help="with --show-payload: callback credentials in clear (masked otherwise)",
    )
    listing.set_defaults(run=cmd_dead_letter_list)
    replaying = actions.add_parser("replay", help="send dead letters back to their queue")
    replaying.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    replaying.set_defaults(run=cmd_dead_letter_replay)
    for action in (listing, replaying):
        add_settings_flags(action, "dead-letter")
