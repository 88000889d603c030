"""The ``forwarder`` command line; imports only the standard library, PyYAML and the settings."""

from forwarder.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
