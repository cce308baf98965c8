"""The Engine protocol over any OpenAI-compatible server (vLLM, llama-server, LM Studio, Ollama's
/v1), with httpx directly: one streaming request, parsed as server-sent events.

Chat streams ask for `stream_options.include_usage`, so the server's own token counts arrive in
a last chunk after the text. llama-server also sends its `timings` object (prompt_n/prompt_ms,
predicted_n/predicted_ms, cache_n): the engine clock, carried into `Timings`. When a server sends
neither, the counts stay at what is known (zero), never estimated from the text; the client
clock still measures TTFT, E2E and ITL.

Options map to OpenAI's parameters; llama-server/vLLM sampling extras (top_k, min_p,
repeat_penalty, ...) go in the JSON body, which both accept. Options that are a property of the
server process there (num_ctx, threads, GPU placement) cannot be set per request and are not sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from ..config import Settings
from ..errors import EngineError, InvalidOptionError, LmgaugeError, UnknownModelError
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    Format,
    GenerateRequest,
    LoadedModel,
    Message,
    ModelInfo,
    Options,
    Result,
    Timings,
)
from ._http import error_message, http_timeout, message_from, normalized, status_error, transport_error

log = logging.getLogger("lmgauge.openai")

# Options whose OpenAI name is the Ollama name.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# llama-server (and, where noted, vLLM) sampling extras, sent under these names in the body.
_EXTRAS = ("top_k", "min_p", "typical_p", "repeat_last_n", "mirostat", "mirostat_tau", "mirostat_eta")
# Fixed when the server starts (or meaningless over HTTP): never sent.
_SERVER_SIDE = frozenset(
    {
        "num_ctx", "num_thread", "num_batch", "num_gpu", "main_gpu", "low_vram", "use_mmap",
        "use_mlock", "numa", "vocab_only", "f16_kv", "logits_all", "num_keep", "penalize_newline",
        "tfs_z", "draft_num_predict",
    }
)


class OpenAIEngine:
    """An OpenAI-compatible server at `base_url` (e.g. http://gpu-box:8000/v1; a URL without a
    path gets /v1); `model` arguments are the server's model ids."""

    name = "openai"

    def __init__(
        self, settings: Settings, base_url: str, api_key: str | None = None, *, stream: bool = True
    ):
        self.settings = settings
        self.base_url = _base_url(base_url)
        self.stream = stream
        self.timeout = settings.request_timeout
        self._server = f"the OpenAI-compatible server at {self.base_url}"
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # base_url ends in "/" so relative paths ("chat/completions") land under /v1/.
        timeout = http_timeout(self.timeout, settings.resilience.connect_timeout)
        self._client = httpx.Client(base_url=self.base_url + "/", timeout=timeout, headers=headers)

    # --- generation ----------------------------------------------------------------------------
    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        body = {"model": request.model, "messages": to_openai_messages(request.messages)}
        if request.tools:
            body["tools"] = request.tools
        body.update(openai_params(request.options, request.format))
        return self._stream("chat/completions", body, request.model)

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        if not request.raw:
            # The server applies the model's chat template to a system + user conversation.
            messages = [Message("system", request.system)] if request.system else []
            messages.append(Message("user", request.prompt))
            return self.chat(
                ChatRequest(
                    model=request.model, messages=messages, options=request.options,
                    format=request.format, keep_alive=request.keep_alive,
                )
            )
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        if request.suffix:
            body["suffix"] = request.suffix
        body.update(openai_params(request.options, request.format))
        return self._stream("completions", body, request.model)

    def _stream(self, path: str, body: dict[str, Any], model: str) -> Iterator[Chunk]:
        """POST and parse the answer; the request goes out on the first `next`, so the client
        clock starts at the send."""
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        state = _Answer()
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status(response.status_code, error_message(response), model)
                if not self.stream:
                    response.read()
                    state.add(_json(response, self._server))
                    if state.text:
                        yield Chunk(content=state.text)
                else:
                    for data in sse_data(response.iter_lines()):
                        if data == "[DONE]":
                            state.done = True
                            break
                        event = _loads(data, self._server)
                        if "error" in event:
                            raise self._in_band(event, model)
                        state.received += 1
                        text = state.add(event)
                        if text:
                            yield Chunk(content=text)
                    if not state.done and state.finish_reason is None:
                        raise EngineError(
                            f"{self._server} ended the stream after {state.received} chunks "
                            "without finishing (no finish_reason, no [DONE]); the server may have crashed"
                        )
        except LmgaugeError:
            raise
        except httpx.TransportError as exc:
            raise transport_error(
                exc, self._server, self.timeout, state.received, hint=": is it running?"
            ) from exc
        except httpx.HTTPError as exc:  # decoding and other client-side failures
            raise EngineError(f"request to {self._server} failed: {exc}") from exc
        yield Chunk(done=True, result=state.result(model, self.name))

    def _in_band(self, event: dict[str, Any], model: str) -> LmgaugeError:
        err = event.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        status = code if isinstance(code, int) and code >= 400 else -1
        return self._status(status, message_from(event), model)

    def _status(self, status: int, message: str, model: str | None) -> LmgaugeError:
        if status in (401, 403):
            return status_error(status, f"{message} (check the API key given for this server)", self._server)
        return status_error(
            status, message, self._server, model=model, available=self._names,
            model_hint=f" ({self._server}; see its /v1/models)",
        )

    # --- the rest of the protocol ----------------------------------------------------------------
    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        data = self._request("POST", "embeddings", model, {"model": model, "input": list(inputs), "encoding_format": "float"})
        rows = sorted(data.get("data") or [], key=lambda row: row.get("index", 0))
        if len(rows) != len(inputs):
            raise EngineError(f"{self._server} returned {len(rows)} embeddings for {len(inputs)} inputs")
        usage = data.get("usage") or {}
        return Embeddings(
            model=model,
            vectors=[normalized([float(v) for v in row["embedding"]]) for row in rows],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
        )

    def tokenize(self, model: str, text: str) -> list[int]:
        """The server's own tokenizer, where it has one: llama-server and vLLM serve /tokenize
        beside /v1 (llama-server reads `content`, vLLM `prompt`; each ignores the other's)."""
        body = {"model": model, "content": text, "prompt": text, "add_special": False,
                "add_special_tokens": False}
        data = self._request("POST", self._root_url("tokenize"), model, body, what="tokenize")
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise EngineError(f"{self._server} answered /tokenize without a token list")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def detokenize(self, model: str, tokens: list[int]) -> str:
        data = self._request(
            "POST", self._root_url("detokenize"), model, {"model": model, "tokens": list(tokens)},
            what="detokenize",
        )
        text = data.get("content", data.get("prompt"))
        if not isinstance(text, str):
            raise EngineError(f"{self._server} answered /detokenize without text")
        return text

    def info(self, model: str) -> ModelInfo:
        models = self.list_models()
        for m in models:
            if m.name == model:
                return m
        raise UnknownModelError(model, [m.name for m in models], hint=f" ({self._server})")

    def list_models(self) -> list[ModelInfo]:
        data = self._request("GET", "models", None)
        out = []
        for entry in data.get("data") or []:
            if not isinstance(entry, dict) or "id" not in entry:
                continue
            details = dict(entry)
            meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}  # llama-server
            # The served window: vLLM's max_model_len; llama-server's meta has the trained one.
            if entry.get("max_model_len"):
                details["context_length"] = entry["max_model_len"]
            if meta.get("n_ctx_train"):
                details["n_ctx_train"] = meta["n_ctx_train"]
            if meta.get("n_params"):
                details["parameters"] = meta["n_params"]
            out.append(
                ModelInfo(
                    name=str(entry["id"]), engine=self.name, source=self._server,
                    size_bytes=meta.get("size"), details=details,
                )
            )
        return out

    def loaded(self) -> list[LoadedModel]:
        return []  # the OpenAI API does not say what is in memory

    def unload(self, model: str) -> None:
        """Nothing to do: an OpenAI-compatible server keeps its model for its lifetime."""

    def close(self) -> None:
        self._client.close()

    # --- plumbing ------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, model: str | None, body: dict[str, Any] | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise transport_error(exc, self._server, self.timeout, 0, hint=": is it running?") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"request to {self._server} failed: {exc}") from exc
        if response.status_code >= 400:
            message = error_message(response)
            if response.status_code == 404 and what and "model" not in message.lower():
                raise EngineError(f"{self._server} has no /{what} endpoint (llama-server and vLLM do)")
            raise self._status(response.status_code, message, model)
        return _json(response, self._server)

    def _root_url(self, endpoint: str) -> str:
        root = self.base_url.removesuffix("/v1")
        return f"{root}/{endpoint}"

    def _names(self) -> list[str]:
        return [m.name for m in self.list_models()]


class _Answer:
    """What a completion has said so far: text, tool calls, finish reason, usage, timings."""

    def __init__(self) -> None:
        self.text = ""
        self.received = 0
        self.done = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, event: dict[str, Any]) -> str:
        """Fold one chunk (or a whole non-streamed response) in; return its new text."""
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        new = ""
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            part = choice.get("delta") or choice.get("message") or {}
            text = part.get("content") if isinstance(part, dict) else None
            if text is None:
                text = choice.get("text")  # /v1/completions
            if isinstance(text, str):
                new += text
            for call in (part.get("tool_calls") if isinstance(part, dict) else None) or []:
                self._add_call(call)
        self.text += new
        return new

    def _add_call(self, call: dict[str, Any]) -> None:
        # Streamed tool calls come in pieces keyed by index; arguments are string fragments.
        slot = self._calls.setdefault(call.get("index", len(self._calls)), {"name": "", "arguments": ""})
        if call.get("id"):
            slot["id"] = call["id"]
        fn = call.get("function") or {}
        slot["name"] += fn.get("name") or ""
        args = fn.get("arguments")
        if isinstance(args, dict):
            slot["arguments"] = args
        elif args:
            slot["arguments"] += args

    def tool_calls(self) -> list[dict[str, Any]] | None:
        """Ollama-shaped tool calls ({"function": {"name", "arguments": {...}}}), like every
        other engine returns them."""
        out = []
        for _, slot in sorted(self._calls.items()):
            args = slot["arguments"]
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args else {}
                except ValueError:
                    pass  # keep the server's text: a malformed call is the model's, shown as is
            call: dict[str, Any] = {"function": {"name": slot["name"], "arguments": args}}
            if "id" in slot:
                call["id"] = slot["id"]
            out.append(call)
        return out or None

    def result(self, model: str, engine: str) -> Result:
        t = Timings()
        usage = self.usage or {}
        if usage:
            t.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            t.output_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            t.cached_tokens = int(details.get("cached_tokens") or 0)
        timings = self.timings or {}
        if timings:
            # llama-server's engine clock: prompt_n excludes the cache_n tokens it reused.
            prompt_n = timings.get("prompt_n")
            cache_n = int(timings.get("cache_n") or 0)
            if prompt_n is not None:
                t.prompt_eval_tokens = int(prompt_n)
            if timings.get("prompt_ms") is not None:
                t.prompt_eval_ns = round(float(timings["prompt_ms"]) * 1e6)
            if timings.get("predicted_ms") is not None:
                t.eval_ns = round(float(timings["predicted_ms"]) * 1e6)
            if not t.cached_tokens:
                t.cached_tokens = cache_n
            if not usage:
                t.output_tokens = int(timings.get("predicted_n") or 0)
                t.prompt_tokens = int(prompt_n or 0) + cache_n
        return Result(
            model=model,
            content=self.text,
            done_reason="length" if self.finish_reason == "length" else "stop",
            timings=t,
            engine=engine,
            tool_calls=self.tool_calls(),
        )


def openai_params(options: Options, fmt: Format = None) -> dict[str, Any]:
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
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    elif fmt is not None:
        raise InvalidOptionError(f"format must be 'json' or a JSON schema object, not {fmt!r}")
    return out


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """lmgauge (Ollama-shaped) messages as OpenAI's: tool calls get ids and JSON-string
    arguments, and each tool result is linked to the oldest call not yet answered."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            msg["content"] = [{"type": "text", "text": m.content}] + [
                {"type": "image_url", "image_url": {"url": _data_url(img)}} for img in m.images
            ]
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                fn = call.get("function", {})
                call_id = call.get("id") or f"call_{uuid.uuid4().hex[:12]}"
                args = fn.get("arguments", {})
                calls.append({
                    "id": call_id, "type": "function",
                    "function": {"name": fn.get("name", ""),
                                 "arguments": args if isinstance(args, str) else json.dumps(args)},
                })
                pending.append(call_id)
            msg["tool_calls"] = calls
        if m.role == "tool":
            if pending:
                msg["tool_call_id"] = pending.pop(0)
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


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


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if "/" not in url.split("://", 1)[1]:
        url += "/v1"  # host:port alone: every OpenAI-compatible server serves /v1
    return url


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklGR", "image/webp")):
        if image.startswith(prefix):
            mime = kind
    return f"data:{mime};base64,{image}"


def _loads(data: str, server: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise EngineError(f"{server} sent an event that is not JSON: {data[:200]!r}") from None
    if not isinstance(event, dict):
        raise EngineError(f"{server} sent an unexpected event: {data[:200]!r}")
    return event


def _json(response: httpx.Response, server: str) -> dict[str, Any]:
    return _loads(response.text, server)
