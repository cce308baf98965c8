"""The gateway's ASGI app (Starlette) and `serve()`.

    from lmgauge.gateway import create_app, serve
    serve()                                  # what `lmgauge serve` runs: 127.0.0.1:11434

Handlers read raw requests and answer with orjson-encoded Responses rather than declaring
pydantic bodies: validation is done once, by the wire-format modules, with Ollama's and OpenAI's
own error shapes. Plain Starlette, not FastAPI: nothing here uses FastAPI's request models or
dependency injection, and its per-request layers (routing wrappers, telemetry and body-limit
middleware) cost a third of the gateway's CPU per request (see benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

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
from .ollama_api import routes as ollama_routes
from .openai_api import routes as openai_routes
from .security import ApiKey, EdgeGuard, Policy, check_bind
from .shutdown import MARGIN_S, graceful_server

log = logging.getLogger("lmgauge.gateway")


def wire(settings: Settings, client: Client | None = None, own_url: str | None = None) -> Gateway:
    """The gateway and the features it uses, built here and handed in (no lookups by name):
    the `auto` router (routing/), the response cache (cache/, None unless `[gateway] cache`),
    and the guard's compaction (context/)."""
    client = client or Client(settings)
    return Gateway(
        settings,
        client,
        own_url,
        router=gateway_router(settings, client),
        cache=gateway_cache(settings, client),
        compactor=compact_to_budget,
    )


def create_app(settings: Settings, client: Client | None = None, own_url: str | None = None) -> Starlette:
    gateway = wire(settings, client, own_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    # Both compute percentiles over the rolling window: off the event loop, so a scrape or an
    # open dashboard never stalls the requests in flight.
    async def metrics(request: Request) -> Response:
        return Response(await asyncio.to_thread(gateway.metrics.render), media_type=CONTENT_TYPE)

    async def stats(request: Request) -> Response:
        return json_response(await asyncio.to_thread(gateway.stats))

    async def dashboard(request: Request) -> Response:
        """Static HTML, served without the key: the page reads the key from its URL fragment
        (/dashboard#key=...), which browsers never send to a server, and sends it as a header."""
        page = resources.files("lmgauge.gateway").joinpath("static/dashboard.html").read_text()
        return HTMLResponse(page, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    async def http_error(request: Request, exc: Exception) -> Response:
        """404 / 405 in the caller's API's error shape."""
        assert isinstance(exc, StarletteHTTPException)
        message = f"{request.method} {request.url.path}: " + (
            "not found" if exc.status_code == 404 else exc.detail or "error"
        )
        error = NoSuchRouteError(message, exc.status_code)
        return openai_error(error) if request.url.path.startswith("/v1/") else ollama_error(error)

    async def unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug
        log.exception("unexpected error on %s", request.url.path)
        return ollama_error(exc)

    routes = [
        *ollama_routes,
        *openai_routes,
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/lmgauge/stats", stats, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
    ]
    # Outermost first: Host/Origin/content type (security.py) before the key, both before routing.
    middleware = [Middleware(EdgeGuard, policy=Policy(settings))]
    if settings.gateway.api_key:
        middleware.append(Middleware(ApiKey, key=settings.gateway.api_key))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={StarletteHTTPException: http_error, Exception: unexpected},
    )
    app.state.gateway = gateway
    app.state.limits = Limits(settings.gateway)  # read by http.read_json before any conversion
    return app


def serve(
    host: str | None = None,
    port: int | None = None,
    settings: Settings | None = None,
    bind: BindAddress | None = None,
    on_ready: Any = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM; in-flight requests finish first, for up to
    shutdown_grace seconds, after which each gets a final error (shutdown.py)."""
    import uvicorn

    if settings is None or bind is None:
        settings, bind = serve_settings(host, port)
    check_bind(bind.host, settings)  # beyond loopback: an API key, or --allow-insecure (warned)
    app = create_app(settings, own_url=bind.url)
    config = uvicorn.Config(
        app,
        host=bind.host,
        port=bind.port,
        loop=_best("uvloop", "asyncio"),
        http=http_protocol(settings.gateway),
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
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
            "running there? choose another with --port or OLLAMA_HOST)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _best(module: str, fallback: str) -> str:
    """uvloop and httptools when installed (they are dependencies; the fallback keeps odd
    platforms working)."""
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback
