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
from collections.abc import Iterator
from typing import Any

import httpx

from ..config import Settings
from ..errors import EngineError, LmgaugeError, UnknownModelError
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    Message,
    ModelInfo,
)
from ..wire import openai as wire
from ._http import error_message, http_timeout, normalized, status_error, transport_error


class OpenAIEngine:
    """An OpenAI-compatible server at `base_url` (e.g. http://gpu-box:8000/v1; a URL without a
    path gets /v1); `model` arguments are the server's model ids."""

    name = "openai"

    def __init__(self, settings: Settings, base_url: str, api_key: str | None = None, *, stream: bool = True):
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
        body = wire.chat_body(request, request.model, self.stream)
        return self._stream("chat/completions", body, request.model)

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        if not request.raw:
            # The server applies the model's chat template to a system + user conversation.
            messages = [Message("system", request.system)] if request.system else []
            messages.append(Message("user", request.prompt))
            return self.chat(
                ChatRequest(
                    model=request.model,
                    messages=messages,
                    options=request.options,
                    format=request.format,
                    keep_alive=request.keep_alive,
                )
            )
        return self._stream("completions", wire.completion_body(request, request.model, self.stream), request.model)

    def _stream(self, path: str, body: dict[str, Any], model: str) -> Iterator[Chunk]:
        """POST and parse the answer; the request goes out on the first `next`, so the client
        clock starts at the send."""
        reader = wire.StreamReader(model, self.name)
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status(response.status_code, error_message(response), model)
                if not self.stream:
                    response.read()
                    reader.feed(_json(response, self._server))
                    if reader.text:
                        yield Chunk(content=reader.text)
                else:
                    for data in wire.sse_data(response.iter_lines()):
                        if data == "[DONE]":
                            reader.done = True
                            break
                        event = _loads(data, self._server)
                        error = wire.error_of(event)
                        if error is not None:
                            raise self._status(error[0], error[1], model)
                        yield from reader.feed(event)
                    if not reader.done and reader.finish_reason is None:
                        raise EngineError(
                            f"{self._server} ended the stream after {reader.received} chunks "
                            "without finishing (no finish_reason, no [DONE]); the server may have crashed"
                        )
        except LmgaugeError:
            raise
        except httpx.TransportError as exc:
            raise transport_error(exc, self._server, self.timeout, reader.received, hint=": is it running?") from exc
        except httpx.HTTPError as exc:  # decoding and other client-side failures
            raise EngineError(f"request to {self._server} failed: {exc}") from exc
        yield Chunk(done=True, result=reader.result())

    def _status(self, status: int, message: str, model: str | None) -> LmgaugeError:
        if status in (401, 403):
            return status_error(status, f"{message} (check the API key given for this server)", self._server)
        return status_error(
            status,
            message,
            self._server,
            model=model,
            available=self._names,
            model_hint=f" ({self._server}; see its /v1/models)",
        )

    # --- the rest of the protocol ----------------------------------------------------------------
    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        data = self._request("POST", "embeddings", model, wire.embeddings_body(model, inputs))
        try:
            emb = wire.embeddings_from_wire(data, model, len(inputs))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"{self._server} sent embeddings lmgauge cannot read: {exc}") from None
        except EngineError as exc:
            raise EngineError(f"{self._server}: {exc}") from None
        emb.vectors = [normalized(v) for v in emb.vectors]
        return emb

    def tokenize(self, model: str, text: str) -> list[int]:
        """The server's own tokenizer, where it has one: llama-server and vLLM serve /tokenize
        beside /v1 (llama-server reads `content`, vLLM `prompt`; each ignores the other's)."""
        body = {"model": model, "content": text, "prompt": text, "add_special": False, "add_special_tokens": False}
        data = self._request("POST", self._root_url("tokenize"), model, body, what="tokenize")
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise EngineError(f"{self._server} answered /tokenize without a token list")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def detokenize(self, model: str, tokens: list[int]) -> str:
        data = self._request(
            "POST",
            self._root_url("detokenize"),
            model,
            {"model": model, "tokens": list(tokens)},
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
            meta = entry["meta"] if isinstance(entry.get("meta"), dict) else {}  # llama-server
            # The served window: vLLM's max_model_len; llama-server's meta has the trained one.
            if entry.get("max_model_len"):
                details["context_length"] = entry["max_model_len"]
            if meta.get("n_ctx_train"):
                details["n_ctx_train"] = meta["n_ctx_train"]
            if meta.get("n_params"):
                details["parameters"] = meta["n_params"]
            out.append(
                ModelInfo(
                    name=str(entry["id"]),
                    engine=self.name,
                    source=self._server,
                    size_bytes=meta.get("size"),
                    details=details,
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
        self,
        method: str,
        path: str,
        model: str | None,
        body: dict[str, Any] | None = None,
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


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if "/" not in url.split("://", 1)[1]:
        url += "/v1"  # host:port alone: every OpenAI-compatible server serves /v1
    return url


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
