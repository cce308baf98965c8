"""OpenAI's HTTP API <-> lmgauge's types, in both directions.

As a server: /v1/chat/completions (SSE streaming, stream_options.include_usage,
response_format json_object / json_schema, tools / tool_choice, reasoning_effort),
/v1/completions, /v1/embeddings, /v1/models. The JSON shapes themselves are built and parsed in
`lmgauge.wire.openai`. Errors are OpenAI's {"error": {"message", "type", "param", "code"}}; an error after a stream
started is a final `data: {"error": ...}` event.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidOptionError, UnknownModelError
from ..types import ChatRequest, Chunk, GenerateRequest, Options
from ..wire import openai as wire
from .disconnect import until_disconnected
from .http import get, json_response, model_name, openai_error, parse_options, read_json
from .ollama_api import parse_embed_input

if TYPE_CHECKING:
    from .core import Gateway, Prepared


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# --- request parsing ------------------------------------------------------------------------------


def sampling_options(body: dict[str, Any]) -> Options:
    """OpenAI's sampling fields as Ollama options (the names lmgauge's engines speak)."""
    opts: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        value = get(body, theirs, int if ours == "seed" else (int, float))
        if value is not None:
            opts[ours] = value
    max_tokens = get(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = get(body, "max_tokens", int)
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidOptionError("max_tokens must be at least 1")
        opts["num_predict"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidOptionError("stop must be a string or an array of strings")
        opts["stop"] = [s for s in stop if s]
    n = get(body, "n", int, 1)
    if n != 1:
        raise InvalidOptionError("n must be 1 (one choice per request)")
    return parse_options(opts)


def _include_usage(body: dict[str, Any]) -> bool:
    return wire.include_usage(body)


def parse_chat(body: dict[str, Any]) -> tuple[ChatRequest, bool, bool]:
    if get(body, "logprobs", bool):
        raise InvalidOptionError("logprobs are not supported by lmgauge")
    request = ChatRequest(model=model_name(body), options=sampling_options(body), **wire.chat_fields(body))
    return request, get(body, "stream", bool, False), _include_usage(body)


def parse_completion(body: dict[str, Any]) -> tuple[GenerateRequest, bool, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidOptionError("prompt must be a string")
    if get(body, "echo", bool):
        raise InvalidOptionError("echo is not supported")
    request = GenerateRequest(
        model=model_name(body),
        prompt=prompt,
        raw=True,
        options=sampling_options(body),
        format=wire.completion_format(body),
        suffix=get(body, "suffix", str),
    )
    return request, get(body, "stream", bool, False), _include_usage(body)


# --- responses ------------------------------------------------------------------------------------


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def sse(prepared: Prepared, chunks: AsyncIterator[Chunk], kind: str, include_usage: bool) -> AsyncIterator[bytes]:
    writer = wire.StreamWriter(prepared.request_id, prepared.model, kind, include_usage)
    try:
        async for chunk in chunks:
            for event in writer.events(chunk):
                yield _sse(event)
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band: the status line is already sent
        yield _sse(wire.error_event(exc))


async def _answer(request: Request, kind: str) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        call, stream, include_usage = parse_chat(body) if kind == "chat" else parse_completion(body)
        prepared = await until_disconnected(request, gateway.prepare("openai", call, stream))
    except Exception as exc:  # noqa: BLE001
        return openai_error(exc)
    try:
        if not stream:
            result = await until_disconnected(request, gateway.complete(prepared))
            make = wire.chat_completion if kind == "chat" else wire.text_completion
            obj = make(prepared.request_id, prepared.model, result)
            return json_response(obj, headers=prepared.headers)
        chunks = await until_disconnected(request, gateway.start_stream(prepared))
    except Exception as exc:  # noqa: BLE001
        return openai_error(exc)
    return StreamingResponse(
        sse(prepared, chunks, kind, include_usage), media_type="text/event-stream", headers=prepared.headers
    )


async def chat_completions(request: Request) -> Response:
    return await _answer(request, "chat")


async def completions(request: Request) -> Response:
    return await _answer(request, "completion")


async def embeddings(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        model = model_name(body)
        inputs = parse_embed_input(body.get("input"))
        encoding = get(body, "encoding_format", str, "float")
        if encoding not in ("float", "base64"):
            raise InvalidOptionError("encoding_format must be float or base64")
        dimensions = get(body, "dimensions", int)
        emb = await gateway.embed(model, inputs, truncate=True, dimensions=dimensions)
    except Exception as exc:  # noqa: BLE001
        return openai_error(exc)

    def encode(vector: list[float]) -> Any:
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    return json_response(wire.embeddings_response(model, emb, encode))


async def models(request: Request) -> Response:
    try:
        names = [m["name"] for m in await _gateway(request).list_models()]
    except Exception as exc:  # noqa: BLE001
        return openai_error(exc)
    return json_response(wire.models_response(names))


async def model(request: Request) -> Response:
    model = request.path_params["model"]
    try:
        names = [m["name"] for m in await _gateway(request).list_models()]
        if model not in names:
            await _gateway(request).show(model)  # any resolvable name exists; else 404
    except UnknownModelError as exc:
        return openai_error(exc)
    except Exception as exc:  # noqa: BLE001
        return openai_error(exc)
    return json_response(wire.model_entry(model))


# The handlers parse their own bodies (http.read_json), so plain Starlette routes are all they need.
routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]
