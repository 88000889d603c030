"""The gevent switch: patch the standard library for gevent before celery and its kin are imported.

gevent must monkey-patch sockets before celery, kombu, requests or boto3 are imported, or their
sockets block and the greenlets run one at a time. ``forwarder worker`` builds its Settings first
(which imports only the standard library and PyYAML), and when they select the gevent pool it
calls ``patch_gevent`` before importing the worker; so the pool may come from the flag, the
environment or the config file alike. Prefork never imports gevent.
"""

from __future__ import annotations

from forwarder.errors import ConfigError

__all__ = ["MAX_TASKS_ENV", "POOLS", "POOL_ENV", "check_gevent_patched", "patch_gevent"]

POOLS = ("prefork", "gevent")
POOL_ENV = "CELERY_WORKER_POOL"
MAX_TASKS_ENV = "CELERY_WORKER_MAX_TASKS_PER_CHILD"


def patch_gevent() -> None:
    """Monkey-patch the standard library for the gevent pool."""
    try:
        import gevent  # noqa: F401  (imported before patch_all so tracers that wrap it see it)
        from gevent import monkey
    except ImportError:
        raise ConfigError(
            "pool", "gevent", "gevent installed: pip install 'inference-forwarder[gevent]'"
        ) from None
    monkey.patch_all()


def check_gevent_patched() -> None:
    """Refuse to run a gevent pool on unpatched sockets, where greenlets would run one at a time."""
    from gevent import monkey

    unpatched = [name for name in ("socket", "ssl") if not monkey.is_module_patched(name)]
    if unpatched:
        raise ConfigError(
            "pool",
            "gevent",
            f"gevent patched before anything else ({', '.join(unpatched)} not patched): start "
            "through `forwarder worker` or `python -m forwarder worker`, which patch first",
        )
