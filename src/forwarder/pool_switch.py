"""The gevent switch: decides the pool before anything else is imported, and patches for gevent.

gevent must monkey-patch the standard library before celery, kombu, requests or boto3 are
imported, or their sockets block and the greenlets run one at a time. So this module imports
nothing beyond the standard library, and it is the only place that reads the environment at
import time of the entrypoint. Prefork never imports gevent.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

POOLS = ("prefork", "gevent")
POOL_ENV = "CELERY_WORKER_POOL"
MAX_TASKS_ENV = "CELERY_WORKER_MAX_TASKS_PER_CHILD"


def requested_pool(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The pool a ``worker`` command asks for: ``--pool`` wins over the environment.

    Read as argparse reads it: the last ``--pool`` given wins, surrounding blanks are dropped.
    """
    flag = None
    for index, arg in enumerate(argv):
        if arg == "--pool" and index + 1 < len(argv):
            flag = argv[index + 1]
        elif arg.startswith("--pool="):
            flag = arg.partition("=")[2]
    if flag is not None and flag.strip():
        return flag.strip()
    return environ.get(POOL_ENV, "").strip() or "prefork"


def patch_if_gevent(argv: Sequence[str] | None = None) -> bool:
    """Monkey-patch for gevent when a worker is started with the gevent pool. True if patched."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "worker" or requested_pool(argv, os.environ) != "gevent":
        return False
    try:
        import gevent  # noqa: F401  (imported before patch_all so tracers that wrap it see it)
        from gevent import monkey
    except ImportError:
        sys.stderr.write(
            "forwarder: the gevent pool needs gevent: pip install 'inference-forwarder[gevent]'\n"
        )
        raise SystemExit(2) from None
    monkey.patch_all()
    return True
