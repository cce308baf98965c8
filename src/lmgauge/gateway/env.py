"""Ollama's environment variables, mapped onto lmgauge's settings for `lmgauge serve`.

An Ollama user's habits carry over: `OLLAMA_HOST=0.0.0.0:8080 lmgauge serve` listens there,
OLLAMA_NUM_PARALLEL sets how many requests a model decodes together, and so on. lmgauge's own
settings (config file, LMGAUGE_* variables, command-line flags) win when both are given.

OLLAMA_HOST means two things in Ollama itself: for `ollama serve` the address to listen on,
for every other command the server to talk to. lmgauge follows the same split: for `serve`
it is the bind address, and then it is *not* also taken as the address of an Ollama engine
behind the gateway (that would point the gateway at itself); the engine address for
`ollama:NAME` models comes from `ollama_host` in the config file or LMGAUGE_OLLAMA_HOST.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..config import Settings, load_settings, normalize_host, parse_duration
from ..errors import InvalidOptionError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


@dataclass(frozen=True)
class BindAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def parse_ollama_host(value: str) -> BindAddress:
    """OLLAMA_HOST as `ollama serve` reads it: [scheme://]host[:port]; a bare host keeps 11434."""
    text = value.strip().rstrip("/")
    text = text.split("://", 1)[-1].split("/", 1)[0]
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, value)
    return BindAddress(host or DEFAULT_HOST, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise InvalidOptionError(f"OLLAMA_HOST={whole!r} has an invalid port")
    return int(text)


def serve_settings(host: str | None = None, port: int | None = None, **overrides: Any) -> tuple[Settings, BindAddress]:
    """Settings and bind address for `lmgauge serve`: flags > lmgauge settings > OLLAMA_* > defaults."""
    env = os.environ
    settings = load_settings(**overrides)
    explicit = settings.model_fields_set

    if "ollama_host" not in explicit and "LMGAUGE_OLLAMA_HOST" not in env:
        # OLLAMA_HOST is our bind address here, not an Ollama engine's (see the module doc).
        settings.ollama_host = normalize_host(f"{DEFAULT_HOST}:{DEFAULT_PORT}", DEFAULT_PORT)
    if "keep_alive" not in explicit and env.get("OLLAMA_KEEP_ALIVE"):
        settings.keep_alive = parse_duration(env["OLLAMA_KEEP_ALIVE"])
    if "parallel" not in explicit and env.get("OLLAMA_NUM_PARALLEL"):
        settings.parallel = _positive("OLLAMA_NUM_PARALLEL", env["OLLAMA_NUM_PARALLEL"])
    if "num_ctx" not in explicit and env.get("OLLAMA_CONTEXT_LENGTH"):
        settings.num_ctx = _positive("OLLAMA_CONTEXT_LENGTH", env["OLLAMA_CONTEXT_LENGTH"])
    gw = settings.gateway
    if "max_queue" not in gw.model_fields_set and env.get("OLLAMA_MAX_QUEUE"):
        gw.max_queue = _positive("OLLAMA_MAX_QUEUE", env["OLLAMA_MAX_QUEUE"], allow_zero=True)
    if "origins" not in gw.model_fields_set and env.get("OLLAMA_ORIGINS"):
        gw.origins = [o.strip() for o in env["OLLAMA_ORIGINS"].split(",") if o.strip()]
    # OLLAMA_MODELS needs nothing here: model resolution already reads Ollama's store from it.

    bind = parse_ollama_host(env["OLLAMA_HOST"]) if env.get("OLLAMA_HOST") else BindAddress(DEFAULT_HOST, DEFAULT_PORT)
    bind = BindAddress(
        host if host is not None else gw.host if gw.host is not None else bind.host,
        port if port is not None else gw.port if gw.port is not None else bind.port,
    )
    return settings, bind


def _positive(name: str, value: str, allow_zero: bool = False) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < (0 if allow_zero else 1):
        raise InvalidOptionError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} integer")
    return number
