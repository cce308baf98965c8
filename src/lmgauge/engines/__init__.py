"""Engines behind one protocol (base.Engine): embedded llama.cpp, Ollama, OpenAI-compatible."""

from __future__ import annotations

from ..config import Settings
from .base import Engine


def create_engine(kind: str, settings: Settings, url: str | None = None) -> Engine:
    """Build the engine for a ModelRef.engine kind. Imports lazily: a user of one engine never
    pays for loading the others."""
    if kind == "llamacpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings)
    if kind == "ollama":
        from .ollama import OllamaEngine

        return OllamaEngine(settings, host=url)
    if kind == "openai":
        from .openai import OpenAIEngine

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIEngine(settings, base_url=url or "", api_key=key)
    raise ValueError(f"unknown engine kind {kind!r}")
