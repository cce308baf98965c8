"""Shared fixtures: the stand-in servers (standin_fixtures.py) and hermetic settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from standin_fixtures import closed_url, ollama_standin, openai_standin, start_standin  # noqa: F401

from lmgauge.config import Settings


@pytest.fixture
def make_settings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings that ignore the user's config file and LMGAUGE_* environment."""
    import os

    for name in list(os.environ):
        if name.startswith("LMGAUGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LMGAUGE_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("LMGAUGE_HOME", str(tmp_path / "home"))

    def make(**kwargs: Any) -> Settings:
        return Settings(**kwargs)

    return make
