"""What both APIs share at the HTTP edge: reading a JSON body safely, checking field types,
and turning an error into the response its API expects.

Every malformed request becomes a 4xx with a message that names the field; nothing a client
sends can make the gateway answer 500.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import BodyTimeoutError, BodyTooLargeError, InvalidOptionError
from ..types import Format, Options


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def status_of(exc: BaseException) -> int:
    status = getattr(exc, "http_status", 500)
    return status if isinstance(status, int) else 500


def retry_headers(exc: BaseException) -> dict[str, str] | None:
    return {"Retry-After": "1"} if status_of(exc) == 503 else None


def ollama_error(exc: BaseException) -> Response:
    """Ollama's shape: {"error": "..."} with the status the error carries."""
    return json_response({"error": str(exc) or type(exc).__name__}, status_of(exc), retry_headers(exc))


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    415: "invalid_request_error",
    503: "server_busy",
    504: "timeout",
}


def openai_error(exc: BaseException) -> Response:
    """OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    status = status_of(exc)
    code = "model_not_found" if status == 404 else None
    body = {
        "error": {
            "message": str(exc) or type(exc).__name__,
            "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }
    return json_response(body, status, retry_headers(exc))


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes before reading them,
    bodies that take longer than the body timeout, and requests over the caps (limits.py, set
    up by create_app as app.state.limits) before anything converts them."""
    limits = getattr(request.app.state, "limits", None)
    try:
        async with asyncio.timeout(limits.body_timeout if limits is not None else None):
            body = await _read_body(request, limit)
    except TimeoutError:
        assert limits is not None  # only a configured body timeout expires
        raise BodyTimeoutError(
            f"the request body did not arrive within {limits.body_timeout:g}s (gateway.body_timeout)"
        ) from None
    data = _parse(body)
    if limits is not None:
        limits.check(data, len(body))
    return data


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidOptionError("invalid Content-Length header")
        if int(length) > limit:
            raise BodyTooLargeError(f"request body is {length} bytes; the limit is {limit} (gateway.max_body_bytes)")
        return await request.body()
    parts, size = [], 0  # chunked: count while reading
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLargeError(f"request body exceeds the limit of {limit} bytes (gateway.max_body_bytes)")
        parts.append(part)
    return b"".join(parts)


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidOptionError("missing request body (send a JSON object)")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidOptionError(f"invalid JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidOptionError("request body must be a JSON object")
    return data


# --- field checks ---------------------------------------------------------------------------------

_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    dict: "an object",
    list: "an array",
    int: "an integer",
    float: "a number",
}


def get(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
) -> Any:
    """body[name] checked against `kind` (None counts as absent); a clear 400 otherwise."""
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidOptionError(f"{name} is required")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds)
    if ok and isinstance(value, bool) and bool not in kinds:
        ok = False  # JSON true is not a number
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidOptionError(f"{name} must be {wanted}, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def model_name(body: dict[str, Any]) -> str:
    value: str = get(body, "model", str, required=True)
    name = value.strip()
    if not name:
        raise InvalidOptionError("model is required")
    return name


def parse_format(value: Any) -> Format:
    """Ollama's `format`: absent, "" (none), "json" or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    raise InvalidOptionError(f'format must be "json" or a JSON schema object, not {value!r:.60}')


def parse_options(value: Any) -> Options:
    """Ollama's `options`: names and ranges are checked by Options.from_dict (limits.py), the
    same rules the library and the CLI apply."""
    if value is not None and not isinstance(value, dict):
        raise InvalidOptionError("options must be an object of name: value")
    options = Options.from_dict(value)
    if any(not s for s in options.stop):  # an empty stop string would end every answer at once
        raise InvalidOptionError("option 'stop' must not contain empty strings")
    return options
