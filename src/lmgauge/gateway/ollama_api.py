"""Ollama's HTTP API <-> lmgauge's types, in both directions.

As a server (the routes below): /api/generate, /api/chat, /api/embed, /api/embeddings,
/api/tags, /api/show, /api/ps, /api/version, /api/pull (for models that are already here),
HEAD and GET /. The JSON shapes themselves (messages, tools, stream objects, final objects and
their timing fields, and the upstream direction) are built and parsed in `lmgauge.wire.ollama`.

Field names, defaults and error shapes follow ../shared/reference/ollama-api.md: NDJSON
streaming unless "stream": false, the final object carries the timing fields in ns, errors are
{"error": "..."} (400 bad request, 404 unknown model; mid-stream as a final NDJSON line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..config import parse_duration
from ..errors import InvalidOptionError
from ..types import ChatRequest, Chunk, GenerateRequest
from ..wire import ollama as wire
from ..wire.ollama import chat_object, generate_object
from ..wire.ollama import messages_from_wire as parse_messages
from ..wire.ollama import tools_from_wire as parse_tools
from .disconnect import until_disconnected
from .http import get, json_response, model_name, ollama_error, parse_format, parse_options, read_json

if TYPE_CHECKING:
    from .core import Gateway, Prepared

# The Ollama API version this gateway follows (the reference documents' commit); clients that
# check /api/version for features get an answer they understand.
OLLAMA_API_VERSION = "0.12.6"
NDJSON = "application/x-ndjson"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# --- request parsing ------------------------------------------------------------------------------


def _keep_alive(body: dict[str, Any]) -> float | None:
    value = get(body, "keep_alive", (str, int, float))
    return None if value is None else parse_duration(value)


def _unsupported(body: dict[str, Any], chat: bool = False) -> None:
    if not chat and body.get("think") not in (None, False):
        raise InvalidOptionError("thinking (think) is supported on /api/chat only")
    if get(body, "logprobs", bool):
        raise InvalidOptionError("logprobs are not supported by lmgauge")
    if get(body, "images", list):
        raise InvalidOptionError("this model does not support images")


def parse_generate(body: dict[str, Any]) -> tuple[GenerateRequest, bool]:
    _unsupported(body)
    context = get(body, "context", list)
    if context:
        raise InvalidOptionError("context (deprecated) is not supported; send the conversation to /api/chat")
    request = GenerateRequest(
        model=model_name(body),
        prompt=get(body, "prompt", str, ""),
        system=get(body, "system", str),
        raw=get(body, "raw", bool, False),
        options=parse_options(body.get("options")),
        format=parse_format(body.get("format")),
        keep_alive=_keep_alive(body),
        suffix=get(body, "suffix", str),
    )
    get(body, "template", str)
    return request, get(body, "stream", bool, True)


def parse_chat(body: dict[str, Any]) -> tuple[ChatRequest, bool]:
    _unsupported(body, chat=True)
    request = ChatRequest(
        model=model_name(body),
        messages=parse_messages(body.get("messages")),
        options=parse_options(body.get("options")),
        format=parse_format(body.get("format")),
        tools=parse_tools(body.get("tools")),
        keep_alive=_keep_alive(body),
        think=wire.think_from_wire(body.get("think")),
    )
    return request, get(body, "stream", bool, True)


# --- responses ------------------------------------------------------------------------------------


async def ndjson(prepared: Prepared, chunks: AsyncIterator[Chunk], kind: str) -> AsyncIterator[bytes]:
    """The NDJSON body: one object per chunk, the final one with the stats; an error after the
    stream started becomes {"error": ...} as the last line (the status is already sent)."""
    writer = wire.StreamWriter(kind, prepared.model)
    try:
        async for chunk in chunks:
            for obj in writer.objects(chunk):
                yield orjson.dumps(obj) + b"\n"
    except Exception as exc:  # noqa: BLE001 - reported to the client in Ollama's shape
        yield orjson.dumps({"error": str(exc) or type(exc).__name__}) + b"\n"


async def _answer(request: Request, kind: str) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        call, stream = parse_chat(body) if kind == "chat" else parse_generate(body)
        make = chat_object if kind == "chat" else generate_object
        empty = not call.messages if isinstance(call, ChatRequest) else not call.prompt and not call.suffix
        if empty:
            # An empty request loads the model, or with keep_alive 0 unloads it (Ollama's convention).
            reason = await gateway.load_or_unload(call.model, call.keep_alive, call.options)
            obj = make(call.model, "", True)
            if reason:
                obj["done_reason"] = reason
            return json_response(obj)
        prepared = await until_disconnected(request, gateway.prepare("ollama", call, stream))
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    try:
        if not stream:
            result = await until_disconnected(request, gateway.complete(prepared))
            return json_response(wire.whole_answer(kind, prepared.model, result), headers=prepared.headers)
        chunks = await until_disconnected(request, gateway.start_stream(prepared))
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return StreamingResponse(ndjson(prepared, chunks, kind), media_type=NDJSON, headers=prepared.headers)


async def api_generate(request: Request) -> Response:
    return await _answer(request, "generate")


async def api_chat(request: Request) -> Response:
    return await _answer(request, "chat")


def parse_embed_input(value: Any, name: str = "input", allow_empty: bool = False) -> list[str]:
    """The texts to embed. `allow_empty`: "" and [] mean no texts (Ollama's /api/embed answers
    them with an empty list; OpenAI's /v1/embeddings refuses them)."""
    if isinstance(value, str):
        return [value] if value or not allow_empty else []
    if isinstance(value, list) and (value or allow_empty) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidOptionError(f"{name} must be a string or a non-empty array of strings")


async def api_embed(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        model = model_name(body)
        inputs = parse_embed_input(body.get("input"), allow_empty=True)
        truncate = get(body, "truncate", bool, True)
        dimensions = get(body, "dimensions", int)
        parse_options(body.get("options"))
        _keep_alive(body)
        emb = await gateway.embed(model, inputs, truncate=truncate, dimensions=dimensions)
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response(wire.embed_response(model, emb))


async def api_embeddings(request: Request) -> Response:
    """The legacy endpoint: one `prompt`, one `embedding`."""
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        model = model_name(body)
        prompt = get(body, "prompt", str, "")
        parse_options(body.get("options"))
        _keep_alive(body)
        if not prompt:
            return json_response(wire.embeddings_response(None))
        emb = await gateway.embed(model, [prompt], truncate=True, dimensions=None)
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response(wire.embeddings_response(emb))


async def api_tags(request: Request) -> Response:
    try:
        models = await _gateway(request).list_models()
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response({"models": models})


async def api_show(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        name = get(body, "model", str) or get(body, "name", str)  # `name` in older clients
        if not name or not name.strip():
            raise InvalidOptionError("model is required")
        get(body, "verbose", bool)
        info = await gateway.show(name.strip())
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response(info)


async def api_ps(request: Request) -> Response:
    try:
        models = await _gateway(request).running()
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response({"models": models})


async def api_version(request: Request) -> Response:
    from .. import __version__

    return json_response({"version": OLLAMA_API_VERSION, "lmgauge": __version__})


async def api_pull(request: Request) -> Response:
    """lmgauge never downloads; a pull of a model that is already here succeeds, so scripts that
    `pull` before use keep working, and anything else is a 404 that says so."""
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        name = get(body, "model", str) or get(body, "name", str)
        if not name or not name.strip():
            raise InvalidOptionError("model is required")
        stream = get(body, "stream", bool, True)
        await gateway.show(name.strip())
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    if stream:
        return Response(b'{"status":"success"}\n', media_type=NDJSON)
    return json_response({"status": "success"})


async def root_get(request: Request) -> Response:
    """GET and HEAD /: the liveness check Ollama clients do."""
    return PlainTextResponse("Ollama is running")


# The handlers parse their own bodies (http.read_json), so plain Starlette routes are all they need.
routes = [
    Route("/api/generate", api_generate, methods=["POST"]),
    Route("/api/chat", api_chat, methods=["POST"]),
    Route("/api/embed", api_embed, methods=["POST"]),
    Route("/api/embeddings", api_embeddings, methods=["POST"]),
    Route("/api/tags", api_tags, methods=["GET"]),
    Route("/api/show", api_show, methods=["POST"]),
    Route("/api/ps", api_ps, methods=["GET"]),
    Route("/api/version", api_version, methods=["GET"]),
    Route("/api/pull", api_pull, methods=["POST"]),
    Route("/", root_get, methods=["GET", "HEAD"]),
]
