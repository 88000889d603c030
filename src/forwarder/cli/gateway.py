"""``forwarder gateway``: the HTTP API in front of the broker."""

from __future__ import annotations

import argparse

from forwarder.cli.flags import add_settings_flags, configure_logging, settings_from

__all__ = ["add_commands", "cmd_gateway"]


def cmd_gateway(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings)
    from forwarder.gateway.server import run_gateway

    return run_gateway(settings)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser("gateway", help="serve the HTTP API (FastAPI + uvicorn)")
    add_settings_flags(gateway, "gateway")
    gateway.set_defaults(run=cmd_gateway)
