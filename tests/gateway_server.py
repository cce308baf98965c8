"""Start a real gateway (uvicorn) on a free 127.0.0.1 port in a thread, for tests."""

from __future__ import annotations

import threading
import time

import uvicorn

from lmgauge.config import Settings
from lmgauge.gateway.app import create_app
from upstream_stub import free_port


class GatewayServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                loop="uvloop", http="httptools", timeout_graceful_shutdown=5)
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
