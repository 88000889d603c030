"""inference-forwarder: forward queued inference tasks to a model server, on Celery.

The package imports nothing heavy on its own: the gevent switch in ``forwarder.__main__`` must be
able to patch before celery or requests are imported, so public names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CallbackError": "forwarder.errors",
    "CallbackRefused": "forwarder.errors",
    "ClientError": "forwarder.errors",
    "ConfigError": "forwarder.errors",
    "DeadLettered": "forwarder.errors",
    "ForwarderError": "forwarder.errors",
    "GatewayError": "forwarder.errors",
    "HookError": "forwarder.errors",
    "ModelResponseError": "forwarder.errors",
    "ModelResponseTooLarge": "forwarder.errors",
    "ModelServerError": "forwarder.errors",
    "ModelServerTimeout": "forwarder.errors",
    "ModelServerUnavailable": "forwarder.errors",
    "PayloadError": "forwarder.errors",
    "TaskCanceled": "forwarder.errors",
    "TaskDeadlineExceeded": "forwarder.errors",
    "TaskExpired": "forwarder.errors",
    "TaskStopped": "forwarder.errors",
    "TaskWaitTimeout": "forwarder.errors",
    "Forwarder": "forwarder.worker.forwarding",
    "FINAL_STATES": "forwarder.protocol",
    "ForwarderClient": "forwarder.client.broker",
    "GatewayClient": "forwarder.client.gateway",
    "TaskResult": "forwarder.client.broker",
    "ModelServerSettings": "forwarder.config.settings",
    "Settings": "forwarder.config.settings",
    "WorkerSettings": "forwarder.config.settings",
    "load_settings": "forwarder.config.settings",
    "LIRA_TASK_NAME": "forwarder.protocol",
    "LEGACY_TASK_NAME": "forwarder.protocol",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forwarder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
