"""``python -m forwarder`` and the ``forwarder`` command.

The gevent switch runs first, before anything that could import celery, requests or boto3.
"""

from forwarder.pool_switch import patch_if_gevent

patch_if_gevent()

import sys

from forwarder.cli import main as cli_main


def main() -> None:
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
