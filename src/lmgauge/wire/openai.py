"""OpenAI's JSON <-> lmgauge's types, both directions (chat completions, completions, embeddings).

Server side (the gateway answering OpenAI clients): `messages_from_wire`, `tool_choice_from_wire`,
`reasoning_from_wire`, `response_format_from_wire` parse a request's parts; `chat_completion`,
`text_completion` build whole answers and `StreamWriter` the SSE chunks. Client side (the OpenAI
engine and the gateway's upstream pool): `chat_body`/`completion_body` build requests and
`StreamReader` folds events (or one whole answer) into Chunks and a Result.

Conventions followed:
- tool calls carry an id and JSON-string arguments; a tool result names the call it answers
  with tool_call_id (linked to the oldest unanswered call when lmgauge does not know it);
- streamed tool calls arrive as delta.tool_calls fragments keyed by index: the first with id,
  type and name, the rest appending to function.arguments (`ToolCallAssembler`, the one place
  that puts them back together);
- reasoning goes in `reasoning_content` (llama-server, vLLM, DeepSeek), apart from `content`;
  a request's `reasoning_effort` maps onto Ollama's think levels;
- usage (with prompt_tokens_details.cached_tokens) and llama-server's `timings` object carry the
  server's counts and clock into `Timings`; nothing is estimated from the text.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ..errors import EngineError, InvalidOptionError
from ..types import (
    RESOURCE_OPTION_NAMES,
    ChatRequest,
    Chunk,
    Embeddings,
    Format,
    GenerateRequest,
    Message,
    Options,
    Result,
    Think,
    Timings,
    ToolChoice,
)
from .ollama import message_from_wire, tool_call, tools_from_wire

log = logging.getLogger("lmgauge.wire")

FINISH = {"stop": "stop", "length": "length", "cancel": "stop", "error": "stop"}
# Options whose OpenAI name is the Ollama name.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# llama-server (and, where noted, vLLM) sampling extras, sent under these names in the body.
_EXTRAS = ("top_k", "min_p", "typical_p", "repeat_last_n", "mirostat", "mirostat_tau", "mirostat_eta")
# Fixed when the server starts (or meaningless over HTTP): never sent.
_SERVER_SIDE = RESOURCE_OPTION_NAMES | {
    "num_ctx",
    "num_keep",
    "penalize_newline",
    "tfs_z",
    "draft_num_predict",
}
# OpenAI's reasoning_effort <-> Ollama's think.
_EFFORT_TO_THINK: dict[str, Think] = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# --- requests: parsing what a client sent ----------------------------------------------------------


def messages_from_wire(value: Any) -> list[Message]:
    """OpenAI messages: content parts, tool calls with string arguments, and tool results that
    name their call by tool_call_id (the function's name is looked up from that call, which is
    what chat templates want)."""
    if not isinstance(value, list) or not value:
        raise InvalidOptionError("messages must be a non-empty array")
    out: list[Message] = []
    names: dict[str, str] = {}
    for i, raw in enumerate(value):
        if isinstance(raw, dict) and raw.get("role") == "developer":  # newer OpenAI name for system
            raw = {**raw, "role": "system"}
        m = message_from_wire(raw, i)
        for call in m.tool_calls or []:
            if call.get("id"):
                names[call["id"]] = call["function"]["name"]
        if m.role == "tool" and not m.tool_name and m.tool_call_id:
            m.tool_name = names.get(m.tool_call_id)
        out.append(m)
    return out


def tool_choice_from_wire(value: Any, tools: list[dict[str, Any]] | None) -> tuple[ToolChoice, str | None]:
    """`tool_choice`: "auto" | "none" | "required" | {"type": "function", "function": {"name"}}."""
    if value is None:
        return "auto", None
    if value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise InvalidOptionError('tool_choice "required" needs tools')
        return value, None
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        known = [t.get("function", {}).get("name") for t in tools or []]
        if not isinstance(name, str) or name not in known:
            raise InvalidOptionError(f"tool_choice names a function that is not in tools: {name!r:.60}")
        return "required", name
    raise InvalidOptionError(
        'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
    )


def tool_choice_to_wire(choice: ToolChoice, forced: str | None) -> Any:
    if forced:
        return {"type": "function", "function": {"name": forced}}
    return choice


def reasoning_from_wire(value: Any) -> Think:
    """`reasoning_effort` as Ollama's think (absent: the model's default)."""
    if value is None:
        return None
    if value not in _EFFORT_TO_THINK:
        raise InvalidOptionError('reasoning_effort must be "none", "minimal", "low", "medium" or "high"')
    return _EFFORT_TO_THINK[value]


def reasoning_to_wire(think: Think) -> str | None:
    if think is None:
        return None
    if think is False:
        return "none"
    return "medium" if think is True else think


def response_format_from_wire(value: Any) -> Format:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidOptionError('response_format must be an object like {"type": "json_object"}')
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidOptionError("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise InvalidOptionError("response_format.type must be text, json_object or json_schema")


def response_format_to_wire(fmt: Format) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise InvalidOptionError(f"format must be 'json' or a JSON schema object, not {fmt!r}")


def include_usage(body: dict[str, Any]) -> bool:
    """stream_options.include_usage: whether a stream ends with a usage event."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise InvalidOptionError("stream_options must be an object")
    value = opts.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise InvalidOptionError("stream_options.include_usage must be true or false")
    return bool(value)


def chat_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The ChatRequest fields of a chat completion body beyond model and sampling: messages,
    response_format, tools, tool_choice, reasoning_effort."""
    tools = tools_from_wire(body.get("tools"))
    choice, forced = tool_choice_from_wire(body.get("tool_choice"), tools)
    return {
        "messages": messages_from_wire(body.get("messages")),
        "format": response_format_from_wire(body.get("response_format")),
        "tools": tools,
        "tool_choice": choice,
        "forced_tool": forced,
        "think": reasoning_from_wire(body.get("reasoning_effort")),
    }


def completion_format(body: dict[str, Any]) -> Format:
    return response_format_from_wire(body.get("response_format"))


# --- requests: building one for an upstream OpenAI-compatible server --------------------------------


def params_to_wire(options: Options, fmt: Format = None) -> dict[str, Any]:
    """Ollama-style options and format as OpenAI request fields."""
    opts = options.to_dict()
    out: dict[str, Any] = {}
    n = opts.pop("num_predict", None)
    if n is not None and n > 0:  # -1/-2 ("until done"/"fill the window") is the server default
        out["max_tokens"] = n
    for name in _SAME_NAME:
        if name in opts:
            out[name] = opts.pop(name)
    if "stop" in opts:
        out["stop"] = list(opts.pop("stop"))
    for name in _EXTRAS:
        if name in opts:
            out[name] = opts.pop(name)
    if "repeat_penalty" in opts:
        value = opts.pop("repeat_penalty")
        out["repeat_penalty"] = value  # llama-server
        out["repetition_penalty"] = value  # vLLM
    skipped = sorted(name for name in opts if name in _SERVER_SIDE)
    if skipped:
        log.debug("options fixed by the server, not sent: %s", ", ".join(skipped))
    unknown = sorted(name for name in opts if name not in _SERVER_SIDE)
    if unknown:
        raise InvalidOptionError(f"option(s) {', '.join(unknown)} cannot be sent to an OpenAI-compatible server")
    response_format = response_format_to_wire(fmt)
    if response_format is not None:
        out["response_format"] = response_format
    return out


def messages_to_wire(messages: list[Message]) -> list[dict[str, Any]]:
    """lmgauge messages as OpenAI's: tool calls get ids and JSON-string arguments, and each tool
    result names its call (its own tool_call_id, else the oldest call not yet answered)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            msg["content"] = [{"type": "text", "text": m.content}] + [
                {"type": "image_url", "image_url": {"url": _data_url(img)}} for img in m.images
            ]
        if m.thinking:
            msg["reasoning_content"] = m.thinking
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                fn = call.get("function", {})
                call_id = call.get("id") or new_call_id()
                args = fn.get("arguments", {})
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": fn.get("name", ""),
                            "arguments": args if isinstance(args, str) else json.dumps(args),
                        },
                    }
                )
                pending.append(call_id)
            msg["tool_calls"] = calls
        if m.role == "tool":
            call_id = m.tool_call_id
            if call_id in pending:
                pending.remove(call_id)
            elif pending:
                call_id = pending.pop(0)
            if call_id:
                msg["tool_call_id"] = call_id
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def chat_body(request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages_to_wire(request.messages)}
    if request.tools:
        body["tools"] = request.tools
        choice = tool_choice_to_wire(request.tool_choice, request.forced_tool)
        if choice != "auto":
            body["tool_choice"] = choice
    effort = reasoning_to_wire(request.think)
    if effort is not None:
        body["reasoning_effort"] = effort
    body.update(params_to_wire(request.options, request.format))
    return _streaming(body, stream)


def completion_body(request: GenerateRequest, model: str, stream: bool) -> dict[str, Any]:
    """A raw prompt for /completions (a templated generate goes to chat_body as a conversation)."""
    body: dict[str, Any] = {"model": model, "prompt": request.prompt}
    if request.suffix:
        body["suffix"] = request.suffix
    body.update(params_to_wire(request.options, request.format))
    return _streaming(body, stream)


def _streaming(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def embeddings_body(model: str, inputs: list[str]) -> dict[str, Any]:
    return {"model": model, "input": list(inputs), "encoding_format": "float"}


# --- answers: building them for a client -----------------------------------------------------------


def usage(result: Result) -> dict[str, Any]:
    t = result.timings
    out: dict[str, Any] = {
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.output_tokens,
        "total_tokens": t.prompt_tokens + t.output_tokens,
    }
    if t.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": t.cached_tokens}
    if t.thinking_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": t.thinking_tokens}
    return out


def tool_calls_to_wire(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.get("id") or new_call_id(),
            "type": "function",
            "function": {
                "name": c["function"]["name"],
                "arguments": json.dumps(c["function"].get("arguments", {}), ensure_ascii=False),
            },
        }
        for c in calls
    ]


def finish_reason(result: Result) -> str:
    """ "tool_calls" when the turn ended in calls, unless it was cut off (length wins: the client
    must know the answer is incomplete)."""
    if result.tool_calls and result.done_reason != "length":
        return "tool_calls"
    return FINISH.get(result.done_reason, "stop")


def chat_completion(request_id: str, model: str, result: Result) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.thinking:
        message["reasoning_content"] = result.thinking
    if result.tool_calls:
        message["tool_calls"] = tool_calls_to_wire(result.tool_calls)
        message["content"] = result.content or None  # OpenAI sends null beside tool calls
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "lmgauge",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result)}],
        "usage": usage(result),
    }


def text_completion(request_id: str, model: str, result: Result) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "lmgauge",
        "choices": [
            {
                "index": 0,
                "text": result.content,
                "logprobs": None,
                "finish_reason": FINISH.get(result.done_reason, "stop"),
            }
        ],
        "usage": usage(result),
    }


class StreamWriter:
    """Chunks -> SSE event objects for one streamed answer (send each as `data: {json}`; then
    `data: [DONE]`). Chat deltas carry role once, then content / reasoning_content, and each tool
    call as OpenAI streams it: a head {index, id, type, function: {name, arguments: ""}} and the
    arguments as a fragment; the last chunk has the finish_reason, then usage if asked for."""

    def __init__(self, request_id: str, model: str, kind: str, with_usage: bool):
        self.kind = kind
        self.with_usage = with_usage
        self.base = {
            "id": request_id,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "lmgauge",
        }
        self._role_sent = False
        self._calls = 0

    def _event(self, delta_or_text: Any, finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta_or_text, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_or_text, "logprobs": None, "finish_reason": finish}
        return {**self.base, "choices": [choice]}

    def _delta(self, **fields: Any) -> dict[str, Any]:
        delta = {} if self._role_sent else {"role": "assistant"}
        self._role_sent = True
        return self._event(delta | fields, None)

    def _tool_events(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for call in tool_calls_to_wire(calls):
            index, self._calls = self._calls, self._calls + 1
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            out.append(self._delta(tool_calls=[head]))
            out.append(
                self._delta(tool_calls=[{"index": index, "function": {"arguments": call["function"]["arguments"]}}])
            )
        return out

    def events(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        if self.kind != "chat":
            if chunk.content:
                out.append(self._event(chunk.content, None))
        else:
            if chunk.thinking:
                out.append(self._delta(reasoning_content=chunk.thinking))
            if chunk.content:
                out.append(self._delta(content=chunk.content))
            if chunk.tool_calls:
                out.extend(self._tool_events(chunk.tool_calls))
        if chunk.done and chunk.result is not None:
            result = chunk.result
            if self.kind == "chat":
                out.extend(self._tool_events((result.tool_calls or [])[self._calls :]))
                out.append(self._event({}, finish_reason(result)))
            else:
                out.append(self._event("", FINISH.get(result.done_reason, "stop")))
            if self.with_usage:
                out.append({**self.base, "choices": [], "usage": usage(result)})
        return out


def error_event(exc: BaseException) -> dict[str, Any]:
    """An error after a stream started (the status line is already sent)."""
    return {"error": {"message": str(exc) or type(exc).__name__, "type": "api_error", "param": None, "code": None}}


def embeddings_response(model: str, emb: Embeddings, encode: Any) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(emb.vectors)],
        "usage": {"prompt_tokens": emb.prompt_tokens, "total_tokens": emb.prompt_tokens},
    }


def model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lmgauge"}


def models_response(names: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(n) for n in names]}


# --- answers: reading what an OpenAI-compatible server sent ----------------------------------------


class ToolCallAssembler:
    """Streamed tool calls put back together: fragments keyed by index, the id and name from the
    first, arguments appended (a server that sends them whole, as an object, works too)."""

    def __init__(self) -> None:
        self._slots: dict[int, dict[str, Any]] = {}

    def add(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index")
        if not isinstance(index, int):
            index = len(self._slots)
        slot = self._slots.setdefault(index, {"name": "", "arguments": ""})
        if fragment.get("id"):
            slot["id"] = fragment["id"]
        fn = fragment.get("function") or {}
        slot["name"] += fn.get("name") or ""
        args = fn.get("arguments")
        if isinstance(args, dict):
            slot["arguments"] = args
        elif isinstance(args, str):
            slot["arguments"] += args

    def calls(self) -> list[dict[str, Any]] | None:
        """lmgauge-shaped calls; arguments that are not JSON are kept as the server's text under
        "_raw" (a malformed call is the model's, shown as is, never dropped)."""
        out = []
        for _, slot in sorted(self._slots.items()):
            args = slot["arguments"]
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except ValueError:
                    args = {"_raw": args}
                if not isinstance(args, dict):
                    args = {"_raw": slot["arguments"]}
            out.append(tool_call(slot["name"], args, slot.get("id")))
        return out or None


def timings_from_wire(usage_obj: dict[str, Any] | None, timings: dict[str, Any] | None) -> Timings:
    """The server's counts (usage) and llama-server's engine clock (timings), where sent."""
    t = Timings()
    u = usage_obj or {}
    if u:
        t.prompt_tokens = int(u.get("prompt_tokens") or 0)
        t.output_tokens = int(u.get("completion_tokens") or 0)
        t.cached_tokens = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        t.thinking_tokens = int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    tm = timings or {}
    if tm:
        # llama-server's engine clock: prompt_n excludes the cache_n tokens it reused.
        prompt_n = tm.get("prompt_n")
        cache_n = int(tm.get("cache_n") or 0)
        if prompt_n is not None:
            t.prompt_eval_tokens = int(prompt_n)
        if tm.get("prompt_ms") is not None:
            t.prompt_eval_ns = round(float(tm["prompt_ms"]) * 1e6)
        if tm.get("predicted_ms") is not None:
            t.eval_ns = round(float(tm["predicted_ms"]) * 1e6)
        if not t.cached_tokens:
            t.cached_tokens = cache_n
        if not u:
            t.output_tokens = int(tm.get("predicted_n") or 0)
            t.prompt_tokens = int(prompt_n or 0) + cache_n
    return t


class StreamReader:
    """SSE events (or one whole response) -> Chunks, then `result()`: text, reasoning, tool calls
    (assembled), finish reason, usage and timings."""

    def __init__(self, model: str, engine: str = "openai"):
        self.model = model
        self.engine = engine
        self.received = 0
        self.done = False
        self.finish_reason: str | None = None
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._usage: dict[str, Any] | None = None
        self._timings: dict[str, Any] | None = None
        self._calls = ToolCallAssembler()

    @property
    def text(self) -> str:
        return "".join(self._text)

    def feed(self, event: Any) -> list[Chunk]:
        """Fold one event in; return the new text and reasoning as Chunks. Raises EngineError for
        an error sent in-band (`error_of` gives its status first, for callers that map it)."""
        if not isinstance(event, dict):
            raise EngineError(f"the server sent an unexpected event: {str(event)[:200]}")
        self.received += 1
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        text, thinking = "", ""
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            part = choice.get("delta") or choice.get("message") or {}
            if not isinstance(part, dict):
                part = {}
            piece = part.get("content")
            if piece is None:
                piece = choice.get("text")  # /v1/completions
            if isinstance(piece, str):
                text += piece
            reasoning = part.get("reasoning_content") or part.get("reasoning")
            if isinstance(reasoning, str):
                thinking += reasoning
            for call in part.get("tool_calls") or []:
                self._calls.add(call)
        self._text.append(text)
        self._thinking.append(thinking)
        return [Chunk(content=text, thinking=thinking)] if text or thinking else []

    def result(self) -> Result:
        t = timings_from_wire(self._usage, self._timings)
        return Result(
            model=self.model,
            content=self.text,
            thinking="".join(self._thinking),
            done_reason="length" if self.finish_reason == "length" else "stop",
            timings=t,
            engine=self.engine,
            tool_calls=self._calls.calls(),
        )


def error_of(event: dict[str, Any]) -> tuple[int, str] | None:
    """(status or -1, message) of an error sent inside a stream, or None."""
    if "error" not in event:
        return None
    err = event.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else err
    return (code if isinstance(code, int) and code >= 400 else -1), str(message or json.dumps(err))


def embeddings_from_wire(obj: dict[str, Any], model: str, n_inputs: int) -> Embeddings:
    rows = sorted((r for r in obj.get("data") or [] if isinstance(r, dict)), key=lambda row: row.get("index", 0))
    if len(rows) != n_inputs:
        raise EngineError(f"the server returned {len(rows)} embeddings for {n_inputs} inputs")
    u = obj.get("usage") or {}
    return Embeddings(
        model=model,
        vectors=[[float(v) for v in row["embedding"]] for row in rows],
        prompt_tokens=int(u.get("prompt_tokens") or 0),
    )


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines; comments and
    other fields skipped), per the HTML SSE spec."""
    buf: list[str] = []
    for line in lines:
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            buf.append(value[1:] if value.startswith(" ") else value)
    if buf:  # a server that does not end its last event with a blank line
        yield "\n".join(buf)


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklGR", "image/webp")):
        if image.startswith(prefix):
            mime = kind
    return f"data:{mime};base64,{image}"
