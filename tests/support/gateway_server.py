"""Start a real gateway (uvicorn) on a free 127.0.0.1 port in a thread, for tests; the
stand-in upstreams (support/standins.py) the gateway tests put behind it; and wait_for, which
polls for what a test waits on instead of sleeping."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from lmgauge.config import Settings
from lmgauge.gateway.app import create_app
from lmgauge.gateway.limits import http_protocol
from lmgauge.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings, own_url=f"http://127.0.0.1:{self.port}")
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            loop="uvloop",
            http=http_protocol(settings.gateway),
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self):
        return self.app.state.gateway

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def wait_logged(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the log writer has written at least n rows."""
        deadline = time.time() + timeout
        while self.gateway.log.written < n and time.time() < deadline:
            time.sleep(0.02)

    def logged(self, models: set[str], since: float, timeout: float = 10.0) -> list[dict]:
        """The gateway's request-log rows since `since` (newest first), once one is written for
        each of `models`. Counting rows (wait_logged) can be satisfied by a row an earlier test's
        request writes late, before this test's own rows are in."""
        deadline = time.time() + timeout
        while True:
            rows = Store(self.settings.db_path).requests(source="gateway", since=since)
            if models <= {r["model"] for r in rows} or time.time() > deadline:
                return rows
            time.sleep(0.02)


def wait_for(condition, timeout: float = 15.0) -> bool:
    """Poll a condition (a behaviour, not a timing: the bound only keeps a broken gateway from
    hanging the suite)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


REPLY = "The sky is blue because of Rayleigh scattering."  # 8 stand-in tokens


def ollama_stub(**kwargs):
    """An Ollama stand-in serving the model `stub` (started; stop() it)."""
    from support.standins import OllamaStandin

    return OllamaStandin(models=("stub",), reply=kwargs.pop("reply", REPLY), **kwargs).start()


def openai_stub(**kwargs):
    """An OpenAI-compatible stand-in serving the model `stub` (started; stop() it)."""
    from support.standins import OpenAIStandin

    return OpenAIStandin(models=("stub",), reply=kwargs.pop("reply", REPLY), **kwargs).start()
