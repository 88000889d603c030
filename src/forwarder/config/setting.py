"""What one row of the settings schema (``forwarder.config.schema``) says: ``Setting``, and the
``Section`` of the file and of ``Settings`` it belongs to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["COMMAND_FAMILIES", "NOT_SHOWN", "Section", "Setting"]

# The command line's families of settings commands; each takes the flags that name it.
COMMAND_FAMILIES = ("worker", "gateway", "tasks", "dead-letter", "callbacks")
NOT_SHOWN = "(not shown)"


@dataclass(frozen=True)
class Section:
    """A mapping of the file and the part of ``Settings`` it fills.

    ``key`` is its dotted place in the file ("" for top-level keys), ``fills`` the attribute path
    in ``Settings`` ("" for ``Settings`` itself). With ``null_is_unset``, a key written as null
    keeps its default; otherwise null is a value, for its parser to take or refuse.
    """

    key: str
    fills: str
    null_is_unset: bool = False


@dataclass(frozen=True)
class Setting:
    """One setting: where it is read from, how it is parsed and shown, and what it fills.

    ``env`` lists the variables that give it, the first one set winning; ``flag`` (with
    ``aliases``) is taken by the command families in ``commands``; a ``secret`` is never shown,
    not in check-config's document and not in an error.
    """

    section: Section
    name: str
    parse: Callable[[object], Any]
    env: tuple[str, ...] = ()
    flag: str = ""  # "": none
    help: str = ""
    commands: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    secret: bool = False
    # How check-config prints the value, when not as it is (a URL with its password masked).
    show: Callable[[Any], object] | None = None
    field: str | None = None  # the dataclass field, when not ``name``

    @property
    def file_key(self) -> str:
        return f"{self.section.key}.{self.name}" if self.section.key else self.name

    @property
    def fills(self) -> str:
        """The dotted attribute path of the value in ``Settings``: ``worker.queue``."""
        return ".".join(part for part in (self.section.fills, self.field or self.name) if part)

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag's value under."""
        return self.flag[2:].replace("-", "_")
