"""``python -m forwarder`` and the ``forwarder`` command.

Nothing heavy is imported here: the worker command patches for gevent (when selected) before it
imports celery, kombu or requests. It patches from ``main()``, which runs once every import has
finished (as ``__main__`` under ``-m``, or called by the console script), never while a module is
being imported: under ``ddtrace-run``, patching inside an import breaks the import lock (importlib
raises "cannot release un-acquired lock").
"""

import sys

from forwarder.cli.commands import main as cli_main


def main() -> None:
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
