"""Ollama's HTTP API <-> lmgauge's types, in both directions.

As a server (the routes below): /api/generate, /api/chat, /api/embed, /api/embeddings,
/api/tags, /api/show, /api/ps, /api/version, /api/pull (for models that are already here),
HEAD and GET /. As a client of upstream Ollama nodes: `upstream_body` and `parse_*` turn an
lmgauge request into Ollama's JSON and Ollama's answers back into Chunks and a Result.

Field names, defaults and error shapes follow ../shared/reference/ollama-api.md: NDJSON
streaming unless "stream": false, the final object carries the timing fields in ns, errors are
{"error": "..."} (400 bad request, 404 unknown model; mid-stream as a final NDJSON line).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from ..config import parse_duration
from ..errors import InvalidOptionError
from ..types import ChatRequest, Chunk, GenerateRequest, Message, Result, Timings
from .disconnect import until_disconnected
from .http import get, json_response, model_name, ollama_error, parse_format, parse_options, read_json

if TYPE_CHECKING:
    from .core import Gateway, Prepared

# The Ollama API version this gateway follows (the reference documents' commit); clients that
# check /api/version for features get an answer they understand.
OLLAMA_API_VERSION = "0.12.6"
ROLES = frozenset({"system", "user", "assistant", "tool"})
NDJSON = "application/x-ndjson"

router = APIRouter()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


# --- request parsing ------------------------------------------------------------------------------

def _keep_alive(body: dict[str, Any]) -> float | None:
    value = get(body, "keep_alive", (str, int, float))
    return None if value is None else parse_duration(value)


def _unsupported(body: dict[str, Any]) -> None:
    if body.get("think") not in (None, False):
        raise InvalidOptionError("this model does not support thinking (think)")
    if get(body, "logprobs", bool):
        raise InvalidOptionError("logprobs are not supported by lmgauge")
    if get(body, "images", list):
        raise InvalidOptionError("this model does not support images")


def parse_messages(value: Any) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidOptionError("messages must be an array of {role, content} objects")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise InvalidOptionError(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidOptionError(f"messages[{i}].role must be one of system, user, assistant, tool")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI-style content parts
            if not all(isinstance(p, dict) for p in content):
                raise InvalidOptionError(f"messages[{i}].content parts must be objects")
            if any(p.get("type") not in (None, "text") for p in content):
                raise InvalidOptionError(f"messages[{i}]: only text content is supported")
            if not all(isinstance(p.get("text", ""), str) for p in content):
                raise InvalidOptionError(f"messages[{i}].content[].text must be a string")
            content = "".join(p.get("text", "") for p in content)
        elif content is not None and not isinstance(content, str):
            raise InvalidOptionError(f"messages[{i}].content must be a string")
        if m.get("images"):
            raise InvalidOptionError("this model does not support images")
        tool_calls = m.get("tool_calls")
        if tool_calls is not None and not (isinstance(tool_calls, list) and all(isinstance(t, dict) for t in tool_calls)):
            raise InvalidOptionError(f"messages[{i}].tool_calls must be an array of objects")
        if tool_calls and not all(isinstance(t.get("function", {}), dict) for t in tool_calls):
            raise InvalidOptionError(f"messages[{i}].tool_calls[].function must be an object with name and arguments")
        tool_name = m.get("tool_name") or m.get("name")
        if tool_name is not None and not isinstance(tool_name, str):
            raise InvalidOptionError(f"messages[{i}].tool_name must be a string")
        messages.append(Message(role=role, content=content or "", tool_calls=tool_calls or None, tool_name=tool_name))
    return messages


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InvalidOptionError("tools must be an array of tool objects")
    return value or None


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
    _unsupported(body)
    request = ChatRequest(
        model=model_name(body),
        messages=parse_messages(body.get("messages")),
        options=parse_options(body.get("options")),
        format=parse_format(body.get("format")),
        tools=parse_tools(body.get("tools")),
        keep_alive=_keep_alive(body),
    )
    return request, get(body, "stream", bool, True)


# --- response formatting --------------------------------------------------------------------------

def final_fields(result: Result) -> dict[str, Any]:
    t = result.timings
    return {
        "done_reason": result.done_reason,
        "total_duration": t.total_ns if t.total_ns is not None else 0,
        "load_duration": t.load_ns,
        "prompt_eval_count": t.prompt_tokens,
        "prompt_eval_duration": t.prompt_eval_ns or 0,
        "eval_count": t.output_tokens,
        "eval_duration": t.eval_ns or 0,
    }


def chat_object(model: str, content: str, done: bool, result: Result | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if result is not None and result.tool_calls:
        message["tool_calls"] = result.tool_calls
    obj: dict[str, Any] = {"model": model, "created_at": now_iso(), "message": message, "done": done}
    if result is not None:
        obj.update(final_fields(result))
    return obj


def generate_object(model: str, content: str, done: bool, result: Result | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"model": model, "created_at": now_iso(), "response": content, "done": done}
    if result is not None:
        obj.update(final_fields(result))
        if result.context:
            obj["context"] = result.context
    return obj


async def ndjson(prepared: Prepared, chunks: AsyncIterator[Chunk], make: Any) -> AsyncIterator[bytes]:
    """The NDJSON body: one object per chunk, the final one with the stats; an error after the
    stream started becomes {"error": ...} as the last line (the status is already sent)."""
    model = prepared.model
    try:
        async for chunk in chunks:
            if chunk.done:
                yield orjson.dumps(make(model, "", True, chunk.result)) + b"\n"
            elif chunk.content:
                yield orjson.dumps(make(model, chunk.content, False)) + b"\n"
    except Exception as exc:  # noqa: BLE001 - reported to the client in Ollama's shape
        yield orjson.dumps({"error": str(exc) or type(exc).__name__}) + b"\n"


async def _answer(request: Request, kind: str) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        call, stream = parse_chat(body) if kind == "chat" else parse_generate(body)
        make = chat_object if kind == "chat" else generate_object
        if kind == "chat" and not call.messages or kind == "generate" and not call.prompt and not call.suffix:
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
            obj = make(prepared.model, result.content, True, result)
            return json_response(obj, headers=prepared.headers)
        chunks = await until_disconnected(request, gateway.start_stream(prepared))
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return StreamingResponse(ndjson(prepared, chunks, make), media_type=NDJSON, headers=prepared.headers)


async def api_generate(request: Request) -> Response:
    return await _answer(request, "generate")


async def api_chat(request: Request) -> Response:
    return await _answer(request, "chat")


def parse_embed_input(value: Any, name: str = "input") -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidOptionError(f"{name} must be a string or a non-empty array of strings")


async def api_embed(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        body = await read_json(request, gateway.settings.gateway.max_body_bytes)
        model = model_name(body)
        inputs = parse_embed_input(body.get("input"))
        truncate = get(body, "truncate", bool, True)
        dimensions = get(body, "dimensions", int)
        parse_options(body.get("options"))
        _keep_alive(body)
        emb = await gateway.embed(model, inputs, truncate=truncate, dimensions=dimensions)
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response({"model": model, "embeddings": emb.vectors, "total_duration": emb.total_ns,
                          "load_duration": emb.load_ns, "prompt_eval_count": emb.prompt_tokens})


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
            return json_response({"embedding": []})
        emb = await gateway.embed(model, [prompt], truncate=True, dimensions=None)
    except Exception as exc:  # noqa: BLE001
        return ollama_error(exc)
    return json_response({"embedding": emb.vectors[0]})


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


# Plain Starlette routes, not FastAPI APIRoutes: the handlers parse their own bodies, and skipping
# FastAPI's per-request dependency solving saves CPU on the hot path (measured at concurrency 16:
# 0.56-0.57 vs 0.63-0.69 ms of gateway CPU per request).
router.add_route("/api/generate", api_generate, methods=["POST"])
router.add_route("/api/chat", api_chat, methods=["POST"])
router.add_route("/api/embed", api_embed, methods=["POST"])
router.add_route("/api/embeddings", api_embeddings, methods=["POST"])
router.add_route("/api/tags", api_tags, methods=["GET"])
router.add_route("/api/show", api_show, methods=["POST"])
router.add_route("/api/ps", api_ps, methods=["GET"])
router.add_route("/api/version", api_version, methods=["GET"])
router.add_route("/api/pull", api_pull, methods=["POST"])
router.add_route("/", root_get, methods=["GET", "HEAD"])

# --- talking to an upstream Ollama node -----------------------------------------------------------

def upstream_body(request: ChatRequest | GenerateRequest, target: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": target, "stream": stream}
    options = request.options.to_dict()
    if options:
        body["options"] = options
    if request.format is not None:
        body["format"] = request.format
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    if isinstance(request, ChatRequest):
        body["messages"] = [m.to_dict() for m in request.messages]
        if request.tools:
            body["tools"] = request.tools
    else:
        body["prompt"] = request.prompt
        for name in ("system", "suffix"):
            if getattr(request, name):
                body[name] = getattr(request, name)
        if request.raw:
            body["raw"] = True
    return body


def chunk_text(obj: dict[str, Any]) -> str:
    """The text of one streamed Ollama object (chat or generate)."""
    message = obj.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return obj.get("response") or ""


def parse_result(obj: dict[str, Any], model: str, content: str) -> Result:
    """A final Ollama object (done: true) as a Result, with the node's own timings."""
    timings = Timings(
        load_ns=int(obj.get("load_duration") or 0),
        prompt_tokens=int(obj.get("prompt_eval_count") or 0),
        prompt_eval_ns=obj.get("prompt_eval_duration"),
        output_tokens=int(obj.get("eval_count") or 0),
        eval_ns=obj.get("eval_duration"),
        total_ns=obj.get("total_duration"),
    )
    message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
    reason = obj.get("done_reason") or "stop"
    return Result(model=model, content=content, done_reason=reason if reason in ("stop", "length") else "stop",
                  timings=timings, engine="ollama", tool_calls=message.get("tool_calls"),
                  context=obj.get("context"))
