"""The gevent switch: patch the standard library for gevent before celery and its kin are imported.

gevent must monkey-patch sockets before celery, kombu, requests or boto3 are imported, or their
sockets block and the greenlets run one at a time. ``forwarder worker`` builds its Settings first
(which imports only the standard library and PyYAML), and when they select the gevent pool it
calls ``patch_gevent`` before importing the worker; so the pool may come from the flag, the
environment or the config file alike. Prefork never imports gevent.

A launcher's instrumentation may import those libraries before the worker's code runs
(``opentelemetry-instrument`` with the Celery instrumentation does): patching then leaves them
with the blocking originals they bound at import, and the worker hangs on its first task. So
``patch_gevent`` refuses when one of them is already imported, unless a launcher patched first.
See docs/launchers.md.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import cast

from forwarder.errors import ConfigError
from forwarder.extras import install_hint

__all__ = [
    "MAX_TASKS_ENV",
    "PATCHED_MODULES",
    "PATCH_FIRST",
    "POOLS",
    "POOL_ENV",
    "check_gevent_patched",
    "patch_gevent",
]

POOLS = ("prefork", "gevent")
POOL_ENV = "CELERY_WORKER_POOL"
MAX_TASKS_ENV = "CELERY_WORKER_MAX_TASKS_PER_CHILD"

# The modules a gevent worker cannot do without patched: its broker, model and AWS connections.
PATCHED_MODULES = ("socket", "ssl", "select")
# Libraries that bind those modules' blocking originals when imported (kombu's poller binds
# select.select, urllib3 binds ssl.SSLContext): imported before the patch, they keep them.
PATCH_FIRST = ("celery", "kombu", "redis", "requests", "urllib3", "boto3", "botocore")


def _monkey() -> ModuleType:
    try:
        import gevent  # noqa: F401  (before gevent.monkey, so that a tracer wrapping gevent sees it)
        from gevent import monkey
    except ImportError:
        raise ConfigError("pool", "gevent", install_hint("gevent", "gevent")) from None
    return cast(ModuleType, monkey)


def _unpatched(monkey: ModuleType) -> list[str]:
    return [name for name in PATCHED_MODULES if not monkey.is_module_patched(name)]


def patch_gevent() -> None:
    """Monkey-patch the standard library for the gevent pool, or refuse if it is too late."""
    monkey = _monkey()
    # Already patched means a launcher did it first, and whatever it imported came after.
    if _unpatched(monkey):
        early = [name for name in PATCH_FIRST if name in sys.modules]
        if early:
            raise ConfigError(
                "pool",
                "gevent",
                f"gevent patched before celery and its kin are imported, but {', '.join(early)} "
                "came first (a launcher's instrumentation or a sitecustomize?): have the launcher "
                "patch first (opentelemetry-instrument: set "
                "OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH=patch_all) or use "
                "prefork; see docs/launchers.md",
            )
    monkey.patch_all()


def check_gevent_patched() -> None:
    """Refuse to run a gevent pool on unpatched modules, where greenlets would run one at a time."""
    unpatched = _unpatched(_monkey())
    if unpatched:
        raise ConfigError(
            "pool",
            "gevent",
            f"gevent patched before the worker starts, but {', '.join(unpatched)} "
            f"{'is' if len(unpatched) == 1 else 'are'} not: start it with `forwarder worker` or "
            "`python -m forwarder worker`, which patch first; see docs/launchers.md",
        )
