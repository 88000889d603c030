"""The fixtures every suite shares, registered with pytest by ``-p support.plugin``.

Each concern's module defines its own fixtures; this one only names those modules for pytest.
"""

from __future__ import annotations

import pkgutil

import pytest

import support

__all__ = ["pytest_plugins"]

# Every module of the package has its asserts rewritten, as a conftest's are; marked before the
# first of them is imported, which only works from here.
pytest.register_assert_rewrite(
    *(f"support.{module.name}" for module in pkgutil.iter_modules(support.__path__))
)

pytest_plugins = [
    "support.aws",
    "support.callbacks",
    "support.processes",
    "support.redis_server",
]
