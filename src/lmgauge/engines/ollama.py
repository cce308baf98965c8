"""The Engine protocol over an Ollama server, through the official `ollama` client.

Ollama reports its own clock in the final chunk of every answer (load, prompt eval and eval
durations in ns, with token counts); those go into `Timings` untouched, next to the client clock
that `with_client_clock` stamps. Ollama has no tokenize endpoint, so `tokenize`/`detokenize`
raise; a layer above may tokenize locally with the model's GGUF.

The official client raises a mix of its own, httpx's and builtin exceptions (and a bare
`ConnectionError` with a generic text); every one of them is turned into a named lmgauge error
that says which server failed and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import ollama
from pydantic import ValidationError

from ..config import Settings, normalize_host
from ..errors import EngineError, InvalidOptionError, LmgaugeError
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    ModelInfo,
)
from ..wire import ollama as wire
from ._http import http_timeout, normalized, status_error, transport_error

# Ollama reports "keep forever" as an expiry ~290 years away; anything past this is "never".
_FOREVER_YEAR = 2200


class OllamaEngine:
    """Ollama over HTTP; `model` arguments are Ollama model names ("qwen2.5:7b").

    `stream=False` asks for whole answers (`"stream": false`), for measuring what a
    non-streaming client sees; the iterator then yields the text in one chunk."""

    name = "ollama"

    def __init__(self, settings: Settings, host: str | None = None, *, stream: bool = True):
        self.settings = settings
        self.host = normalize_host(host or settings.ollama_host, default_port=11434)
        self.stream = stream
        self.timeout = settings.request_timeout
        self._server = f"Ollama at {self.host}"
        self._client = ollama.Client(
            host=self.host, timeout=http_timeout(self.timeout, settings.resilience.connect_timeout)
        )

    # --- generation ----------------------------------------------------------------------------
    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        body = wire.chat_body(request, request.model, self.stream)

        def call() -> Any:
            # ollama's overloads accept only a literal True or False for stream; ours is a bool.
            return self._client.chat(  # type: ignore[call-overload,misc]
                model=request.model,
                messages=body["messages"],
                tools=body.get("tools"),
                stream=self.stream,
                think=body.get("think"),
                format=body.get("format"),
                options=body.get("options"),
                keep_alive=body.get("keep_alive"),
            )

        return self._stream(request.model, call)

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        body = wire.generate_body(request, request.model, self.stream)

        def call() -> Any:
            return self._client.generate(  # type: ignore[call-overload,misc]  # the same: stream
                model=request.model,
                prompt=body["prompt"],
                suffix=body.get("suffix"),
                system=body.get("system"),
                raw=body.get("raw"),
                stream=self.stream,
                format=body.get("format"),
                options=body.get("options"),
                keep_alive=body.get("keep_alive"),
            )

        return self._stream(request.model, call)

    def _stream(self, model: str, call: Callable[[], Any]) -> Iterator[Chunk]:
        """Send the request (on the first `next`, so the client clock starts at the send) and
        turn Ollama's chunks into ours; the last one carries Ollama's timings."""
        received = 0
        parts: Any = None
        try:
            try:
                # Builds and validates the request; for stream=False this is the whole exchange.
                parts = call()
            except ValidationError as exc:
                if not exc.title.endswith("Request"):  # stream=False: the answer did not parse
                    raise
                raise InvalidOptionError(f"invalid request for {self._server}: {_first_error(exc)}") from None
            if not self.stream:
                parts = iter([parts])
            reader = wire.StreamReader(model, self.name)
            for part in parts:
                received += 1
                for chunk in reader.feed(part.model_dump(exclude_none=True)):
                    yield chunk
                    if chunk.done:
                        return
            raise EngineError(
                f"{self._server} ended the stream after {received} chunks without the final one; "
                "the model runner may have crashed (see the Ollama server log)"
            )
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, model, received) from exc
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()  # a stream closed early releases its connection (and Ollama cancels)

    # --- the rest of the protocol ----------------------------------------------------------------
    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        try:
            resp = self._client.embed(model=model, input=list(inputs))
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, model) from exc
        if len(resp.embeddings) != len(inputs):
            raise EngineError(f"{self._server} returned {len(resp.embeddings)} embeddings for {len(inputs)} inputs")
        emb = wire.embeddings_from_wire(resp.model_dump(exclude_none=True), model)
        emb.vectors = [normalized(v) for v in emb.vectors]
        return emb

    def tokenize(self, model: str, text: str) -> list[int]:
        raise EngineError(
            f"{self._server} cannot tokenize: Ollama has no tokenize endpoint "
            "(count tokens with the model's GGUF locally, or use the server's prompt_eval_count)"
        )

    def detokenize(self, model: str, tokens: list[int]) -> str:
        raise EngineError(
            f"{self._server} cannot detokenize: Ollama has no detokenize endpoint (use the model's GGUF locally)"
        )

    def info(self, model: str) -> ModelInfo:
        try:
            show = self._client.show(model)
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, model) from exc
        details = _details(show.details)
        details.update(_architecture(show.modelinfo or {}))
        details["quantization"] = details.get("quantization_level")
        details["template"] = show.template or ""
        details["chat_template"] = bool(show.template)
        details["capabilities"] = list(show.capabilities or [])
        details["modelfile_parameters"] = show.parameters or ""
        details["model_info"] = dict(show.modelinfo or {})
        if show.modified_at:
            details["modified_at"] = show.modified_at.isoformat()
        return ModelInfo(name=model, engine=self.name, source=self._server, details=details)

    def list_models(self) -> list[ModelInfo]:
        try:
            resp = self._client.list()
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, None) from exc
        out = []
        for m in resp.models:
            details = _details(m.details)
            details["digest"] = m.digest
            if m.modified_at:
                details["modified_at"] = m.modified_at.isoformat()
            out.append(
                ModelInfo(
                    name=m.model or "",
                    engine=self.name,
                    source=self._server,
                    size_bytes=int(m.size) if m.size is not None else None,
                    details=details,
                )
            )
        return out

    def loaded(self) -> list[LoadedModel]:
        try:
            resp = self._client.ps()
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, None) from exc
        out = []
        for m in resp.models:
            details = _details(m.details)
            details["digest"] = m.digest
            details["size_vram"] = int(m.size_vram) if m.size_vram is not None else None
            out.append(
                LoadedModel(
                    name=m.model or m.name or "",
                    engine=self.name,
                    size_bytes=int(m.size or 0),
                    context_length=m.context_length or 0,
                    expires_at=_epoch(m.expires_at),
                    details=details,
                )
            )
        return out

    def unload(self, model: str) -> None:
        """Ask Ollama to unload now (an empty generate with keep_alive 0, as Ollama documents)."""
        try:
            self._client.generate(model=model, keep_alive=0)
        except LmgaugeError:
            raise
        except Exception as exc:
            raise self._error(exc, model) from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]  # ollama leaves close() unannotated

    # --- errors ----------------------------------------------------------------------------------
    def _error(self, exc: Exception, model: str | None, received: int = 0) -> LmgaugeError:
        if isinstance(exc, ollama.ResponseError):
            return status_error(
                exc.status_code,
                str(exc.error),
                self._server,
                model=model,
                available=self._names,
                model_hint=f" ({self._server}; pull it with `ollama pull {model}`)",
            )
        if isinstance(exc, ollama.RequestError):
            return InvalidOptionError(f"invalid request for {self._server}: {exc.error}")
        if isinstance(exc, httpx.TransportError | ConnectionError):
            return transport_error(exc, self._server, self.timeout, received, hint=": is `ollama serve` running?")
        if isinstance(exc, json.JSONDecodeError | ValidationError):
            return EngineError(f"{self._server} sent a response lmgauge cannot read: {exc}")
        return EngineError(f"request to {self._server} failed: {type(exc).__name__}: {exc}")

    def _names(self) -> list[str]:
        return [m.name for m in self.list_models()]


def _details(details: Any) -> dict[str, Any]:
    return details.model_dump(exclude_none=True) if details is not None else {}


def _architecture(model_info: Any) -> dict[str, Any]:
    """Ollama's GGUF metadata under the same keys as `GGUFInfo.summary()`, so sizing and `show`
    treat a model served by Ollama like a local file."""
    info = dict(model_info)
    arch = info.get("general.architecture")
    if not arch:
        return {}

    def key(suffix: str) -> Any:
        return info.get(f"{arch}.{suffix}")

    n_embd = key("embedding_length")
    n_head = key("attention.head_count")
    if isinstance(n_head, list):
        n_head = max(n_head) if n_head else None
    n_head_kv = key("attention.head_count_kv")
    if isinstance(n_head_kv, list):
        n_head_kv = max(n_head_kv) if n_head_kv else None
    head_dim = key("attention.key_length") or (n_embd // n_head if n_embd and n_head else None)
    return {
        "architecture": arch,
        "parameters": info.get("general.parameter_count"),
        "n_layer": key("block_count"),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": n_head_kv if n_head_kv is not None else n_head,
        "head_dim": head_dim,
        "n_ctx_train": key("context_length"),
        "n_vocab": key("vocab_size"),
        "sliding_window": key("attention.sliding_window"),
    }


def _epoch(when: datetime | None) -> float | None:
    if when is None or when.year >= _FOREVER_YEAR:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
