"""Post-inference hooks: ``callback`` and ``logging``, chosen by name in the settings."""

from __future__ import annotations

from forwarder.config.hooks import HOOK_NAMES
from forwarder.config.settings import Settings
from forwarder.hooks.base import Hook, HookCounts, HookRunner, TaskOutcome

__all__ = ["HOOK_NAMES", "Hook", "HookCounts", "HookRunner", "TaskOutcome", "build_hooks"]


def _build(name: str, settings: Settings) -> Hook:
    # Each implementation is imported only when chosen: the Firehose sink needs boto3.
    if name == "callback":
        from forwarder.hooks.callback import CallbackHook

        if settings.hooks.callback.delivery == "inline":
            return CallbackHook(settings.hooks.callback)
        from forwarder.hooks.deliveries.enqueue import Enqueuer

        return CallbackHook(settings.hooks.callback, enqueue=Enqueuer(settings))
    if name == "logging":
        from forwarder.hooks.logging import LoggingHook
        from forwarder.hooks.sinks import build_sink

        return LoggingHook(settings.hooks.endpoint, build_sink(settings))
    raise ValueError(f"unknown hook {name!r}; known: {', '.join(HOOK_NAMES)}")


def build_hooks(settings: Settings) -> HookRunner:
    """The hooks the settings list, in their order, ready to run."""
    return HookRunner([_build(name, settings) for name in settings.hooks.names])
