"""Optional dependencies: imported where they are used, and a missing one says what to install."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

__all__ = ["import_extra", "install_hint"]


def install_hint(module: str, extra: str) -> str:
    """``"<module> installed: pip install 'inference-forwarder[<extra>]'"``, for "allowed: ..."."""
    return f"{module} installed: pip install 'inference-forwarder[{extra}]'"


def import_extra(module: str, extra: str, error: Callable[[str], Exception]) -> ModuleType:
    """``module``, or ``error(install_hint(module, extra))`` raised when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(install_hint(module, extra)) from None
