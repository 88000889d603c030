"""``forwarder worker`` and ``forwarder check-config``: the worker, and the settings it uses."""

from __future__ import annotations

import argparse
import sys

import yaml

from forwarder.cli.flags import add_settings_flags, configure_logging, settings_argv, settings_from
from forwarder.config.masking import mask_url
from forwarder.config.schema import masked_document
from forwarder.worker.gevent_switch import patch_gevent

__all__ = ["add_commands", "cmd_check_config", "cmd_deliver", "cmd_worker"]


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.worker.pool == "gevent":
        patch_gevent()
    configure_logging(settings)
    from forwarder.worker.app import run_worker

    return run_worker(settings, settings_argv(args, "worker"))


def cmd_deliver(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings)
    from forwarder.hooks.deliveries.deliverer import run_deliverer

    return run_deliverer(settings)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the settings as a config file would hold them, then what they select, as comments."""
    settings = settings_from(args)
    from forwarder.celery_ext.brokers import broker_config

    config = broker_config(settings.worker)
    sys.stdout.write(yaml.safe_dump(masked_document(settings), sort_keys=False))
    sys.stdout.write(
        f"# broker: {config.kind} ({mask_url(config.broker_url)})\n"
        f"# results: {mask_url(config.result_backend)}\n"
        f"# visibility timeout: {settings.worker.visibility_timeout} s\n"
    )
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # No abbreviations: `--host` (the gateway's) must not be taken for `--hostname`.
    worker = commands.add_parser(
        "worker", help="consume tasks and forward them to the model server", allow_abbrev=False
    )
    add_settings_flags(worker, "worker")
    worker.set_defaults(run=cmd_worker)

    deliver = commands.add_parser(
        "deliver",
        help="deliver queued callbacks (the worker starts one itself unless "
        "callback.delivery_slots is 0)",
        allow_abbrev=False,
    )
    add_settings_flags(deliver, "worker")
    deliver.set_defaults(run=cmd_deliver)

    check = commands.add_parser(
        "check-config", help="validate settings and print them (masked)", allow_abbrev=False
    )
    add_settings_flags(check, "worker")
    check.set_defaults(run=cmd_check_config)
