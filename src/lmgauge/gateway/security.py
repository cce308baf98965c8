"""Who may talk to the gateway at all, decided before a request is parsed (docs/security.md).

A gateway on 127.0.0.1 is reachable by every web page in the user's browser, not only by local
programs:

- DNS rebinding: a page on evil.example re-points its name to 127.0.0.1 and then reads the
  gateway's answers as same-origin. Its requests carry `Host: evil.example`, so only requests
  whose Host is a loopback name, an IP literal (a literal cannot be rebound), this machine's name
  or a configured name (`[gateway] allowed_hosts`) get through.
- Cross-site "simple" POSTs: any page may POST `text/plain` or a form to any address without a
  CORS preflight. Browsers send `Origin` on every cross-site POST, so a request whose Origin is
  not loopback, the gateway's own (same-origin pages such as the dashboard) or configured
  (`[gateway] origins`, OLLAMA_ORIGINS) is refused, whatever its Content-Type. Requests without
  an Origin are not from a web page (curl, SDKs) and keep working, including Ollama's documented
  `curl ... -d '{json}'` (curl sends it form-urlencoded); other non-JSON bodies get 415.
- CORS is off unless `[gateway] cors = true`: then allowed origins may also read the answers.

Beyond loopback, LAN peers can reach it too: `check_bind` refuses to listen there without an API
key unless `allow_insecure` is set (and then warns loudly). The key is compared in constant time.
All of this is pure ASGI, ahead of routing: a refused request costs a header scan.
"""

from __future__ import annotations

import fnmatch
import functools
import hmac
import ipaddress
import logging
import socket
from collections.abc import Iterable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..errors import ForbiddenError, InvalidOptionError, LmgaugeError, UnauthorizedError, UnsupportedMediaError
from .http import ollama_error, openai_error

log = logging.getLogger("lmgauge.gateway")

JSON_TYPES = frozenset({"", "application/json"})
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# GET / (the liveness check Ollama clients do) and the dashboard page (static HTML; its data
# requests carry the key, read from the URL fragment, which browsers never send to a server).
OPEN_PATHS = frozenset({"/", "/dashboard"})


def _host_name(value: str) -> str:
    """`Host` or an origin's authority without the port, lowercased, brackets dropped."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


# Cached: every request's Host is checked, and clients send the same few names. Bounded, since
# a hostile client may send a new one with each request.
@functools.lru_cache(maxsize=1024)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_bind(host: str) -> bool:
    return _is_loopback(_host_name(host) if host.startswith("[") else host.lower())


class Policy:
    """The Host and Origin allowlists, built once from settings."""

    def __init__(self, settings: Settings):
        gw = settings.gateway
        machine = socket.gethostname().lower()
        self.any_host = "*" in gw.allowed_hosts
        self.hosts = frozenset({machine, f"{machine}.local", *(h.lower() for h in gw.allowed_hosts)})
        self.host_patterns = tuple(h.lower() for h in gw.allowed_hosts if "*" in h)
        self.any_origin = "*" in gw.origins
        self.origins = tuple(o.lower().rstrip("/") for o in gw.origins)
        self.cors = gw.cors

    def host_ok(self, host: str) -> bool:
        if not host or self.any_host:
            return True  # HTTP/1.0 without Host: not a browser
        name = _host_name(host)
        return (
            _is_loopback(name)
            or _is_ip(name)
            or name in self.hosts
            or any(fnmatch.fnmatchcase(name, p) for p in self.host_patterns)
        )

    def origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if self.any_origin:
            return True
        scheme, sep, authority = origin.partition("://")
        if sep and scheme in ("http", "https"):
            if _is_loopback(_host_name(authority)) or authority == host.strip().lower():
                return True  # a loopback page, or the gateway's own (the Host was checked first)
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.origins)


def _refuse(scope: Scope, error: LmgaugeError) -> Response:
    return openai_error(error) if scope["path"].startswith("/v1/") else ollama_error(error)


class EdgeGuard:
    """Pure ASGI, outermost: Host, then Origin, then the body's content type; CORS when enabled."""

    def __init__(self, app: ASGIApp, policy: Policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = content_type = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        policy = self.policy
        error: LmgaugeError | None = None
        if not policy.host_ok(host or ""):
            error = ForbiddenError(
                f"Host {(host or '')[:80]!r} is not allowed (DNS rebinding defence); "
                "add it to gateway.allowed_hosts if you reach the gateway by that name"
            )
        elif origin is not None and not policy.origin_ok(origin, host or ""):
            error = ForbiddenError(
                f"requests from web pages at {origin[:80]!r} are not allowed; add the origin "
                "to gateway.origins (or OLLAMA_ORIGINS) to allow it"
            )
        elif scope["method"] in BODY_METHODS and content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in JSON_TYPES and not (media == FORM and origin is None):
                error = UnsupportedMediaError(
                    f"Content-Type {media[:60]!r} is not accepted; send JSON (Content-Type: application/json)"
                )
        if error is not None:
            await _refuse(scope, error)(scope, receive, send)
            return
        if origin is None or not policy.cors:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # a preflight from an allowed origin
            await _preflight(origin, scope["headers"])(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _preflight(origin: str, headers: Iterable[tuple[bytes, bytes]]) -> Response:
    asked = next((v.decode("latin-1") for k, v in headers if k == b"access-control-request-headers"), "")
    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": asked or "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


class ApiKey:
    """`Authorization: Bearer KEY` on every request but the OPEN_PATHS pages, compared in
    constant time (hmac.compare_digest)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        response = _refuse(
            scope, UnauthorizedError("missing or wrong API key: send Authorization: Bearer <key> (gateway.api_key)")
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


def check_bind(host: str, settings: Settings) -> None:
    """Listening beyond loopback without an API key lets every LAN peer use (and unload) the
    models: refused unless `allow_insecure`, and then warned about loudly."""
    if is_loopback_bind(host) or settings.gateway.api_key:
        return
    if not settings.gateway.allow_insecure:
        raise InvalidOptionError(
            f"refusing to listen on {host} without an API key: anyone who can reach this machine could use "
            "the models. Set gateway.api_key (LMGAUGE_GATEWAY__API_KEY), listen on 127.0.0.1, or pass "
            "--allow-insecure if the network is yours alone"
        )
    log.warning(
        "!!! INSECURE: listening on %s without an API key (--allow-insecure): every host that can reach "
        "this address can use the models on it. See docs/security.md.",
        host,
    )
