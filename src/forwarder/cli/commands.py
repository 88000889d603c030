"""``forwarder worker | deliver | check-config | gateway | submit | get | cancel | dead-letter |
callbacks | demo | echo-server``: the parser, assembled from one module per command family, and ``main``.

This package imports only the standard library, PyYAML and the settings: the worker command must
be able to patch for gevent before celery or requests are imported.

Bad settings end the command with exit status 2 and one line naming the key, the value and what
is allowed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from forwarder.cli import callbacks, dead_letters, devtools, gateway, tasks, worker
from forwarder.errors import ConfigError, ForwarderError

__all__ = ["build_parser", "main"]

# Each adds its commands to the parser, in the order ``forwarder --help`` lists them.
_FAMILIES = (worker, gateway, tasks, dead_letters, callbacks, devtools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder", description="Asynchronous inference forwarder on Celery."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in _FAMILIES:
        family.add_commands(commands)
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
