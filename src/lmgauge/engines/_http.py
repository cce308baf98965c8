"""What the HTTP engines share: timeouts, and turning transport failures and HTTP statuses into
the named errors of errors.py, so a remote server fails the same way whichever engine talks to it.

Every message names the server and its URL, because "connection refused" alone does not say
which of several backends is down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx

from ..errors import (
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    InvalidOptionError,
    LmgaugeError,
    UnknownModelError,
)

# A dead host that drops SYNs would otherwise hold a caller for the whole request_timeout.
MAX_CONNECT_TIMEOUT = 10.0


def http_timeout(request_timeout: float, connect_timeout: float = MAX_CONNECT_TIMEOUT) -> httpx.Timeout:
    """`request_timeout` bounds every wait for the server: connecting, and each read. For a
    stream that is the longest silence allowed between two pieces, not the length of the whole
    answer (a long generation that keeps producing tokens is not a hang). Connecting is bounded
    by `connect_timeout` too ([resilience] connect_timeout)."""
    return httpx.Timeout(request_timeout, connect=min(request_timeout, connect_timeout))


def transport_error(exc: Exception, server: str, timeout: float, received: int, hint: str = "") -> LmgaugeError:
    """A failure below HTTP (refused, timed out, connection lost) as a named error.

    `server` reads like "Ollama at http://127.0.0.1:11434"; `received` is how many stream pieces
    had arrived, so a caller can tell "never answered" from "broke off mid-answer" (a retry of the
    latter would repeat text already shown)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError) or (
        isinstance(exc, ConnectionError) and not isinstance(exc, LmgaugeError)
    ):
        return EngineUnavailableError(f"cannot reach {server}{hint}")
    if isinstance(exc, httpx.TimeoutException):
        if received:
            return EngineUnavailableError(
                f"{server} went silent mid-stream: no data for {timeout:g} s after {received} "
                "chunks (request_timeout; raise it with LMGAUGE_REQUEST_TIMEOUT if the server is "
                "just slow)"
            )
        return EngineUnavailableError(
            f"{server} did not answer within {timeout:g} s (request_timeout; raise it with "
            "LMGAUGE_REQUEST_TIMEOUT if the server is just slow, e.g. loading a model)"
        )
    why = str(exc) or type(exc).__name__
    if received:
        return EngineUnavailableError(
            f"the connection to {server} broke mid-stream after {received} chunks ({why}); "
            "the server closed it or crashed"
        )
    return EngineUnavailableError(f"{server} closed the connection without answering ({why})")


def status_error(
    status: int,
    message: str,
    server: str,
    model: str | None = None,
    available: Callable[[], list[str]] | None = None,
    model_hint: str = "",
) -> LmgaugeError:
    """An HTTP error status (or an error sent inside a stream, status -1) as a named error.

    A 404 whose message is about the model is an unknown model; a bare 404 ("404 page not
    found") means a wrong URL or an endpoint this server version lacks, not a wrong model. 429
    and 503 mean "busy, retry later" (rate limit, queue full, model still loading), which a
    router must not confuse with a bad request."""
    message = message.strip() or f"HTTP {status}"
    if status == 404:
        if model is not None and ("model" in message.lower() or model in message):
            names: list[str] = []
            if available is not None:
                try:
                    names = available()
                except LmgaugeError:
                    names = []
            return UnknownModelError(model, names, hint=model_hint)
        return EngineError(f"{server} answered 404 Not Found ({message}); check the URL")
    if status in (429, 503):
        return EngineBusyError(f"{server} is busy ({status}: {message}); retry later")
    if 400 <= status < 500:
        return InvalidOptionError(f"{server} rejected the request ({status}): {message}")
    if status < 0:
        return EngineError(f"{server} failed mid-stream: {message}")
    return EngineError(f"{server} failed ({status}): {message}")


def error_message(response: httpx.Response) -> str:
    """The server's own words from an error body, whichever convention it follows: Ollama and
    llama-server `{"error": "..."}` / `{"error": {"message": ...}}` (OpenAI), vLLM
    `{"message": ...}`, FastAPI `{"detail": ...}`; else the text itself."""
    try:
        text = response.text
    except (httpx.ResponseNotRead, httpx.StreamError):
        return response.reason_phrase
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or response.reason_phrase
    return message_from(data) or text.strip()[:500]


def message_from(data: Any) -> str:
    """The message inside a decoded error object ("" when there is none)."""
    if not isinstance(data, dict):
        return ""
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or json.dumps(err))
    if isinstance(err, str):
        return err
    for key in ("message", "detail"):
        if data.get(key):
            return str(data[key])
    return ""


def normalized(vector: list[float]) -> list[float]:
    """L2-normalised copy: the Engine protocol promises unit vectors, and not every server
    (vLLM with some poolers, older llama-server) sends them."""
    norm = math.sqrt(sum(v * v for v in vector))
    if not norm:
        return [float(v) for v in vector]
    return [v / norm for v in vector]
