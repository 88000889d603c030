"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config.settings import environment_variables


@pytest.fixture
def no_settings_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """None of the variables the settings read, whatever the shell running pytest has set, and
    the default data folder in this test's own folder."""
    for name in environment_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
