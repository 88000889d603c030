"""``python -m forwarder`` and the ``forwarder`` command.

Nothing heavy is imported here: the worker command patches for gevent (when selected) before it
imports celery, kombu or requests.
"""

import sys

from forwarder.cli import main as cli_main


def main() -> None:
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
