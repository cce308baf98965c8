"""The gateway's FastAPI app and `serve()`.

    from lmgauge.gateway import create_app, serve
    serve()                                  # what `lmgauge serve` runs: 127.0.0.1:11434

Handlers read raw requests and answer with orjson-encoded Responses rather than declaring
pydantic bodies: validation is done once, by the wire-format modules, with Ollama's and OpenAI's
own error shapes, and the hot path stays short (see benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..cache.gateway import gateway_cache
from ..client import Client
from ..config import Settings
from ..context.compaction import compact_to_budget
from ..errors import EngineUnavailableError, NoSuchRouteError
from ..routing.gateway import gateway_router
from .core import Gateway
from .env import BindAddress, serve_settings
from .http import json_response, ollama_error, openai_error
from .limits import Limits, http_protocol
from .metrics import CONTENT_TYPE
from .ollama_api import router as ollama_router
from .openai_api import router as openai_router
from .security import ApiKey, EdgeGuard, Policy, check_bind
from .shutdown import MARGIN_S, graceful_server

log = logging.getLogger("lmgauge.gateway")


def wire(settings: Settings, client: Client | None = None, own_url: str | None = None) -> Gateway:
    """The gateway and the features it uses, built here and handed in (no lookups by name):
    the `auto` router (routing/), the response cache (cache/, None unless `[gateway] cache`),
    and the guard's compaction (context/)."""
    client = client or Client(settings)
    return Gateway(settings, client, own_url, router=gateway_router(settings, client),
                   cache=gateway_cache(settings, client), compactor=compact_to_budget)


def create_app(settings: Settings, client: Client | None = None, own_url: str | None = None) -> FastAPI:
    gateway = wire(settings, client, own_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="lmgauge gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    app.state.limits = Limits(settings.gateway)  # read by http.read_json before any conversion
    app.include_router(ollama_router)
    app.include_router(openai_router)

    # Both compute percentiles over the rolling window: off the event loop, so a scrape or an
    # open dashboard never stalls the requests in flight.
    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(await asyncio.to_thread(gateway.metrics.render), media_type=CONTENT_TYPE)

    @app.get("/api/lmgauge/stats")
    async def stats() -> Response:
        return json_response(await asyncio.to_thread(gateway.stats))

    @app.get("/dashboard")
    async def dashboard() -> Response:
        """Static HTML, served without the key: the page reads the key from its URL fragment
        (/dashboard#key=...), which browsers never send to a server, and sends it as a header."""
        page = resources.files("lmgauge.gateway").joinpath("static/dashboard.html").read_text()
        return HTMLResponse(page, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """404 / 405 in the caller's API's error shape."""
        message = f"{request.method} {request.url.path}: " + (
            "not found" if exc.status_code == 404 else exc.detail or "error")
        error = NoSuchRouteError(message, exc.status_code)
        return openai_error(error) if request.url.path.startswith("/v1/") else ollama_error(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug
        log.exception("unexpected error on %s", request.url.path)
        return ollama_error(exc)

    # Outermost last: Host/Origin/content type (security.py) before the key, both before routing.
    if settings.gateway.api_key:
        app.add_middleware(ApiKey, key=settings.gateway.api_key)
    app.add_middleware(EdgeGuard, policy=Policy(settings))
    return app


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None,
          bind: BindAddress | None = None, on_ready: Any = None) -> None:
    """Run the gateway until SIGINT/SIGTERM; in-flight requests finish first, for up to
    shutdown_grace seconds, after which each gets a final error (shutdown.py)."""
    import uvicorn

    if settings is None or bind is None:
        settings, bind = serve_settings(host, port)
    check_bind(bind.host, settings)  # beyond loopback: an API key, or --allow-insecure (warned)
    app = create_app(settings, own_url=bind.url)
    config = uvicorn.Config(
        app, host=bind.host, port=bind.port, loop=_best("uvloop", "asyncio"), http=http_protocol(settings.gateway),
        lifespan="on", log_level="warning", access_log=False, proxy_headers=False,
        # uvicorn's hint says int; it waits with asyncio, where a float is what it means
        timeout_graceful_shutdown=settings.gateway.shutdown_grace + MARGIN_S,  # type: ignore[arg-type]
        server_header=False,
    )
    server = graceful_server(config, app.state.gateway.cutoff, settings.gateway.shutdown_grace)
    sock = _listen(bind)  # bind first: a busy port is a one-line error, not a uvicorn log
    if on_ready is not None:
        on_ready(bind)
    server.run(sockets=[sock])


def _listen(bind: BindAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as exc:
        sock.close()
        raise EngineUnavailableError(
            f"cannot listen on {bind.host}:{bind.port}: {exc.strerror or exc} (is Ollama or another gateway "
            "running there? choose another with --port or OLLAMA_HOST)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _best(module: str, fallback: str) -> str:
    """uvloop and httptools when installed (they are dependencies; the fallback keeps odd
    platforms working)."""
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback
