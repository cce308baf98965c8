"""The exceptions a user can cause and catch. Each message says what to do next.

The CLI prints `str(error)` on one line and exits non-zero; the gateway answers
`{"error": str(error)}` with `error.http_status`, the way Ollama does.
"""

from __future__ import annotations


class LmgaugeError(Exception):
    """Base class: anything lmgauge raises on purpose."""

    http_status = 500


class InvalidOptionError(LmgaugeError, ValueError):
    """A bad option, flag or request field (named in the message)."""

    http_status = 400


class UnknownModelError(LmgaugeError, LookupError):
    """The model name resolves to nothing; the message lists what exists."""

    http_status = 404

    def __init__(self, name: str, available: list[str] | None = None, hint: str = ""):
        self.name = name
        self.available = available or []
        shown = ", ".join(self.available[:12]) + (" ..." if len(self.available) > 12 else "")
        msg = f"model {name!r} not found"
        if shown:
            msg += f"; available: {shown}"
        msg += hint or " (see `lmgauge models`, or give a path to a .gguf file)"
        super().__init__(msg)


class ModelFileError(LmgaugeError):
    """The file exists but is not a usable GGUF (wrong format, truncated, corrupt)."""

    http_status = 500


class ContextOverflowError(LmgaugeError):
    """The prompt does not fit the context window. Never truncated silently."""

    http_status = 400

    def __init__(self, prompt_tokens: int, num_ctx: int, what: str = "prompt"):
        self.prompt_tokens = prompt_tokens
        self.num_ctx = num_ctx
        super().__init__(
            f"{what} is {prompt_tokens} tokens but the context window (num_ctx) is {num_ctx}; "
            "shorten it, or raise num_ctx (e.g. -o num_ctx=8192) up to the model's limit"
        )


class EngineUnavailableError(LmgaugeError, ConnectionError):
    """A server could not be reached or failed (the message names the URL)."""

    http_status = 502


class EngineBusyError(LmgaugeError):
    """The engine's queue is full; retry later (HTTP 503 with Retry-After)."""

    http_status = 503


class InsufficientMemoryError(LmgaugeError):
    """Loading the model with these settings would not fit in memory (checked before loading)."""

    http_status = 500  # Ollama answers 500 "model requires more system memory ... than is available"


class EngineError(LmgaugeError):
    """The engine failed while serving a request (llama.cpp decode error, server error)."""

    http_status = 500


class RequestCancelled(LmgaugeError):
    """The caller cancelled the request (client disconnect, Ctrl-C)."""

    http_status = 499


class RequestTimeoutError(LmgaugeError, TimeoutError):
    """A request took longer than its configured timeout (first token or total)."""

    http_status = 504


# --- resilience (resilience.py) -------------------------------------------------------------------


class UpstreamTimeoutError(EngineUnavailableError):
    """A model did not answer (or stopped answering) within the configured timeout."""

    http_status = 504


class CircuitOpenError(EngineUnavailableError):
    """A model's circuit breaker is open: it failed repeatedly, so calls fail fast for a while."""

    http_status = 503


# --- the gateway: what its clients and its upstream nodes can cause -------------------------------


class BodyTooLargeError(InvalidOptionError):
    """A request body over `[gateway] max_body_bytes`."""

    http_status = 413


class BodyTimeoutError(LmgaugeError):
    """A request body that did not arrive within `[gateway] body_timeout`."""

    http_status = 408


class UnauthorizedError(LmgaugeError):
    """No API key, or the wrong one (`[gateway] api_key`)."""

    http_status = 401


class ForbiddenError(LmgaugeError):
    """A Host or Origin the gateway does not serve (DNS rebinding, cross-site requests)."""

    http_status = 403


class UnsupportedMediaError(LmgaugeError):
    """A body that is neither JSON nor the form-encoded JSON curl sends."""

    http_status = 415


class NoSuchRouteError(LmgaugeError):
    """A path or method the gateway does not serve (404 / 405, in the caller's API's shape)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.http_status = status


class ClientGoneError(LmgaugeError):
    """The client closed the connection before its answer was ready."""

    http_status = 499  # nginx's "client closed request": nobody reads it, logs and tests may


class ShuttingDownError(EngineUnavailableError):
    """The gateway stopped before this answer was complete."""

    http_status = 503


class UpstreamStatusError(LmgaugeError):
    """An upstream node answered with an HTTP error status."""

    def __init__(self, url: str, status: int, message: str):
        self.http_status = status if 400 <= status < 500 else 502
        self.status = status
        super().__init__(message if 400 <= status < 500 else f"upstream {url} answered {status}: {message}")


class FirstTokenTimeoutError(RequestTimeoutError):
    """A node accepted a request but sent no first token in time: a node failure, like a 5xx."""
