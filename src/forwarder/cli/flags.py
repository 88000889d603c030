"""What every settings command shares: its flags, the one ``Settings`` it builds, its logging.

The flags come from the settings schema (``forwarder.config.schema``): each command family takes
the settings that name it. Imports only the standard library, PyYAML and the settings, like
``forwarder.cli.commands``.
"""

from __future__ import annotations

import argparse
from typing import Any

from forwarder.config.parsers import boolean
from forwarder.config.schema import SETTINGS, flags_for
from forwarder.config.settings import Settings, load_settings

__all__ = ["add_settings_flags", "configure_logging", "settings_argv", "settings_from"]


def add_settings_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """``--config``, ``--set`` and the flags of the settings that ``command``'s family takes."""
    parser.add_argument("--config", help="YAML file (model-engine layout accepted as is)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="override a config key"
    )
    for setting in flags_for(command):
        variables = f" (env {', '.join(setting.env)})" if setting.env else ""
        # A yes/no setting's flag alone means true; ``--flag false`` still says no.
        given_alone: dict[str, Any] = (
            {"nargs": "?", "const": "true"} if setting.parse is boolean else {}
        )
        parser.add_argument(
            setting.flag,
            *setting.aliases,
            dest=setting.dest,
            metavar=setting.metavar,
            help=f"{setting.help}{variables}",
            **given_alone,
        )


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings from the command's ``--config``, ``--set`` and flags, and the environment."""
    given = {s.flag: getattr(args, s.dest, None) for s in SETTINGS if s.flag}
    flags = {flag: value for flag, value in given.items() if value is not None}
    return load_settings(args.config, args.set, flags=flags)


def settings_argv(args: argparse.Namespace, command: str) -> list[str]:
    """The settings arguments ``args`` were parsed from, for another command of the family."""
    argv = ["--config", args.config] if args.config else []
    for override in args.set:
        argv += ["--set", override]
    for setting in flags_for(command):
        value = getattr(args, setting.dest, None)
        if value is not None:
            argv += [setting.flag, str(value)]
    return argv


def configure_logging(settings: Settings) -> None:
    from forwarder.observability.logs import configure

    worker = settings.worker
    configure(worker.log_level, worker.log_format, worker.queue, worker.library_log_level)
