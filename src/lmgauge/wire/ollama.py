"""Ollama's JSON <-> lmgauge's types, both directions (../shared/reference/ollama-api.md).

Server side (the gateway answering Ollama clients): `messages_from_wire`, `tools_from_wire`,
`think_from_wire` parse a request's parts; `StreamWriter` turns Chunks into NDJSON objects and
`chat_object`/`generate_object` build whole answers. Client side (engines and the gateway's
upstream pool talking to an Ollama server): `chat_body`/`generate_body` build requests and
`StreamReader` turns Ollama's objects back into Chunks and a Result, timings through the one
map `timings_from_wire`.

Streaming follows Ollama: thinking and text arrive as they are produced, tool calls in a chunk
of their own (each call complete), and the final object (done: true) carries no text, only the
done_reason and the engine's clock in ns.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Literal

from ..errors import EngineError, InvalidOptionError
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    Message,
    Result,
    Think,
    Timings,
)

ROLES = frozenset({"system", "user", "assistant", "tool"})
THINK_LEVELS: tuple[Literal["low", "medium", "high"], ...] = ("low", "medium", "high")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


# --- tool calls: lmgauge's one shape ---------------------------------------------------------------


def tool_call(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    """A tool call in lmgauge's (Ollama's) shape."""
    call: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call_id:
        call["id"] = call_id
    return call


def tool_call_from_wire(value: Any, where: str) -> dict[str, Any]:
    """One call as a client or server sent it ({"function": {"name", "arguments"}} with arguments
    an object or a JSON string, optional id) in lmgauge's shape; malformed is a clear error."""
    if not isinstance(value, dict) or not isinstance(value.get("function"), dict):
        raise InvalidOptionError(f"{where} must be an object with a function")
    fn = value["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"{where}.function.name must be a non-empty string")
    args = fn.get("arguments")
    if args is None or args == "":
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            raise InvalidOptionError(f"{where}.function.arguments is not valid JSON") from None
    if not isinstance(args, dict):
        raise InvalidOptionError(f"{where}.function.arguments must be an object")
    call_id = value.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidOptionError(f"{where}.id must be a string")
    return tool_call(name, args, call_id)


# --- requests: parsing what a client sent ----------------------------------------------------------


def message_from_wire(m: Any, i: int) -> Message:
    """messages[i] of an Ollama (or OpenAI-style) request."""
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
    calls = m.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise InvalidOptionError(f"messages[{i}].tool_calls must be an array of objects")
    tool_calls = [tool_call_from_wire(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls or [])]
    tool_name = m.get("tool_name") or m.get("name")
    if tool_name is not None and not isinstance(tool_name, str):
        raise InvalidOptionError(f"messages[{i}].tool_name must be a string")
    thinking = m.get("thinking") or m.get("reasoning_content") or ""
    if not isinstance(thinking, str):
        raise InvalidOptionError(f"messages[{i}].thinking must be a string")
    call_id = m.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidOptionError(f"messages[{i}].tool_call_id must be a string")
    return Message(
        role=role,
        content=content or "",
        tool_calls=tool_calls or None,
        tool_name=tool_name,
        thinking=thinking,
        tool_call_id=call_id,
    )


def messages_from_wire(value: Any) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidOptionError("messages must be an array of {role, content} objects")
    return [message_from_wire(m, i) for i, m in enumerate(value)]


def tools_from_wire(value: Any) -> list[dict[str, Any]] | None:
    """`tools`: [{"type": "function", "function": {"name", "description", "parameters"}}]."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InvalidOptionError("tools must be an array of tool objects")
    for i, tool in enumerate(value):
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidOptionError(f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}')
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidOptionError(f"tools[{i}].function.parameters must be a JSON schema object")
    return value or None


def think_from_wire(value: Any) -> Think:
    """Ollama's `think`: true/false, or an effort level "low"/"medium"/"high"."""
    if value is None or isinstance(value, bool):
        return value
    for level in THINK_LEVELS:
        if value == level:
            return level
    raise InvalidOptionError('think must be true, false, "low", "medium" or "high"')


# --- requests: building one for an upstream Ollama server -------------------------------------------


def message_to_wire(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        out["thinking"] = m.thinking
    if m.tool_calls:
        out["tool_calls"] = [{"function": dict(c["function"])} for c in m.tool_calls]
    if m.tool_name:
        out["tool_name"] = m.tool_name
    if m.images:
        out["images"] = m.images
    return out


def _common_body(request: ChatRequest | GenerateRequest, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": stream}
    options = request.options.to_dict()
    if options:
        body["options"] = options
    if request.format is not None:
        body["format"] = request.format
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    return body


def chat_body(request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    body = _common_body(request, model, stream)
    body["messages"] = [message_to_wire(m) for m in request.messages]
    tools = request.tools if request.tool_choice != "none" else None
    if tools and request.forced_tool:  # Ollama has no tool_choice: offer only the one forced
        tools = [t for t in tools if t.get("function", {}).get("name") == request.forced_tool]
    if tools:
        body["tools"] = tools
    if request.think is not None:
        body["think"] = request.think
    return body


def generate_body(request: GenerateRequest, model: str, stream: bool) -> dict[str, Any]:
    body = _common_body(request, model, stream)
    body["prompt"] = request.prompt
    if request.system:
        body["system"] = request.system
    if request.suffix:
        body["suffix"] = request.suffix
    if request.raw:
        body["raw"] = True
    return body


# --- answers: building them for a client -----------------------------------------------------------


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


def chat_object(
    model: str,
    content: str,
    done: bool,
    result: Result | None = None,
    *,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One /api/chat object: a streamed piece, or (done, with `result`) the final/whole answer."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = [
            {"function": dict(c["function"])} | ({"id": c["id"]} if c.get("id") else {}) for c in tool_calls
        ]
    obj: dict[str, Any] = {"model": model, "created_at": now_iso(), "message": message, "done": done}
    if result is not None:
        obj.update(final_fields(result))
    return obj


def generate_object(
    model: str,
    content: str,
    done: bool,
    result: Result | None = None,
    *,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One /api/generate object (tool calls have no place in generate)."""
    obj: dict[str, Any] = {"model": model, "created_at": now_iso(), "response": content, "done": done}
    if thinking:
        obj["thinking"] = thinking
    if result is not None:
        obj.update(final_fields(result))
        if result.context:
            obj["context"] = result.context
    return obj


def whole_answer(kind: str, model: str, result: Result) -> dict[str, Any]:
    """A non-streamed answer ("stream": false): everything in one object."""
    make = chat_object if kind == "chat" else generate_object
    return make(model, result.content, True, result, thinking=result.thinking, tool_calls=result.tool_calls)


class StreamWriter:
    """Chunks -> NDJSON objects for one streamed answer. Thinking and text go out as they come,
    tool calls in an object of their own as each call completes (any the engine only reported in
    its Result go out just before the final object), and the final object has the stats."""

    def __init__(self, kind: str, model: str):
        self.make = chat_object if kind == "chat" else generate_object
        self.model = model
        self._sent_calls = 0
        self._sent_thinking = False

    def objects(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        if chunk.thinking or chunk.content or chunk.tool_calls:
            self._sent_thinking |= bool(chunk.thinking)
            self._sent_calls += len(chunk.tool_calls or [])
            out.append(
                self.make(self.model, chunk.content, False, thinking=chunk.thinking, tool_calls=chunk.tool_calls)
            )
        if chunk.done and chunk.result is not None:
            result = chunk.result
            missing = (result.tool_calls or [])[self._sent_calls :]
            thinking = result.thinking if not self._sent_thinking else ""
            if missing or thinking:
                out.append(self.make(self.model, "", False, thinking=thinking, tool_calls=missing))
            out.append(self.make(self.model, "", True, result))
        return out


def embed_response(model: str, emb: Embeddings) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": emb.vectors,
        "total_duration": emb.total_ns,
        "load_duration": emb.load_ns,
        "prompt_eval_count": emb.prompt_tokens,
    }


def embeddings_response(emb: Embeddings | None) -> dict[str, Any]:
    """The legacy /api/embeddings answer: one vector (empty for an empty prompt)."""
    return {"embedding": emb.vectors[0] if emb is not None else []}


# --- answers: reading what an Ollama server sent ---------------------------------------------------


def timings_from_wire(obj: dict[str, Any]) -> Timings:
    """The engine clock of a final Ollama object, the one map from Ollama's fields. Ollama counts
    the prompt tokens it evaluated and says nothing about its cache."""
    prompt = obj.get("prompt_eval_count")
    return Timings(
        load_ns=int(obj.get("load_duration") or 0),
        prompt_tokens=int(prompt or 0),
        prompt_eval_tokens=int(prompt) if prompt is not None else None,
        prompt_eval_ns=obj.get("prompt_eval_duration"),
        output_tokens=int(obj.get("eval_count") or 0),
        eval_ns=obj.get("eval_duration"),
        total_ns=obj.get("total_duration"),
    )


def embeddings_from_wire(obj: dict[str, Any], model: str) -> Embeddings:
    return Embeddings(
        model=model,
        vectors=[list(map(float, v)) for v in obj.get("embeddings") or []],
        prompt_tokens=int(obj.get("prompt_eval_count") or 0),
        load_ns=int(obj.get("load_duration") or 0),
        total_ns=int(obj.get("total_duration") or 0),
    )


def piece_from_wire(obj: dict[str, Any]) -> Chunk:
    """The text, thinking and tool calls of one streamed object (chat or generate)."""
    message = obj.get("message")
    if isinstance(message, dict):
        calls = [tool_call_from_wire(c, "message.tool_calls[]") for c in message.get("tool_calls") or []]
        return Chunk(
            content=message.get("content") or "", thinking=message.get("thinking") or "", tool_calls=calls or None
        )
    return Chunk(content=obj.get("response") or "", thinking=obj.get("thinking") or "")


class StreamReader:
    """Ollama's objects (streamed, or one whole answer) -> Chunks; the final one's Result has
    the whole text, thinking, every tool call and Ollama's own timings."""

    def __init__(self, model: str, engine: str = "ollama"):
        self.model = model
        self.engine = engine
        self.received = 0
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def feed(self, obj: dict[str, Any]) -> list[Chunk]:
        if not isinstance(obj, dict):
            raise EngineError(f"Ollama sent an unexpected object: {str(obj)[:200]}")
        if "error" in obj:
            raise EngineError(f"upstream error: {obj['error']}")
        self.received += 1
        try:
            piece = piece_from_wire(obj)
        except InvalidOptionError as exc:  # the server's fault, not the caller's
            raise EngineError(f"Ollama sent a malformed tool call: {exc}") from None
        self._text.append(piece.content)
        self._thinking.append(piece.thinking)
        self._calls.extend(piece.tool_calls or [])
        out = [piece] if piece.content or piece.thinking or piece.tool_calls else []
        if obj.get("done"):
            out.append(Chunk(done=True, result=self.result(obj)))
        return out

    def result(self, final: dict[str, Any]) -> Result:
        reason = final.get("done_reason") or "stop"
        context = final.get("context")
        return Result(
            model=self.model,
            content="".join(self._text),
            thinking="".join(self._thinking),
            done_reason="length" if reason == "length" else "stop",
            timings=timings_from_wire(final),
            engine=self.engine,
            tool_calls=list(self._calls) or None,
            context=list(context) if context else None,
        )
