"""The one protocol every engine implements, and the client-clock wrapper they all share.

An engine takes requests whose `model` is already the engine's own name for the model (a GGUF
path for the embedded engine, a tag for Ollama, a model id for an OpenAI-compatible server);
`lmgauge.client.Client` turns user-facing names into those.

Streaming is the primitive: `chat` and `generate` return an iterator of `Chunk`s whose last
chunk has `done=True` and carries the `Result`. Closing the iterator early cancels the request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from ..errors import EngineError
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    ModelInfo,
    Result,
)


@runtime_checkable
class Engine(Protocol):
    name: str  # "llamacpp", "ollama", "openai"

    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        """Stream an answer to a conversation, using the model's chat template."""
        ...

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        """Stream a completion of a prompt (templated unless request.raw)."""
        ...

    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        """One L2-normalised vector per input."""
        ...

    def tokenize(self, model: str, text: str) -> list[int]:
        """The model's own token ids for text (raises EngineError where a server cannot)."""
        ...

    def detokenize(self, model: str, tokens: list[int]) -> str: ...

    def info(self, model: str) -> ModelInfo:
        """Metadata for one model (Ollama's /api/show)."""
        ...

    def list_models(self) -> list[ModelInfo]: ...

    def loaded(self) -> list[LoadedModel]:
        """Models held in memory right now (Ollama's /api/ps)."""
        ...

    def unload(self, model: str) -> None: ...

    def close(self) -> None:
        """Release every model and connection."""
        ...


def with_client_clock(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Stamp the client clock onto a stream: the same code times every engine.

    `sent_ns` is taken just before the engine's iterator is first advanced (which is when the
    embedded engine submits and a remote engine sends the request); each non-empty content chunk
    is stamped on arrival. The stamps go into the final Result's Timings.
    """
    sent = time.perf_counter_ns()
    arrivals: list[int] = []
    try:
        for chunk in chunks:
            now = time.perf_counter_ns()
            if chunk.content:
                arrivals.append(now)
            if chunk.done:
                if chunk.result is None:
                    raise EngineError("engine ended a stream without a result")
                t = chunk.result.timings
                t.sent_ns = sent
                t.chunk_ns = arrivals
                t.first_token_ns = arrivals[0] if arrivals else None
                t.end_ns = now
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # propagate cancellation to the engine


def collect(chunks: Iterator[Chunk]) -> Result:
    """Drain a stream and return its Result (the text and the thinking are the concatenation of
    the chunks'; tool calls are the Result's own)."""
    parts: list[str] = []
    thinking: list[str] = []
    for chunk in chunks:
        parts.append(chunk.content)
        thinking.append(chunk.thinking)
        if chunk.done:
            assert chunk.result is not None
            chunk.result.content = "".join(parts)
            chunk.result.thinking = "".join(thinking) or chunk.result.thinking
            return chunk.result
    raise EngineError("engine stream ended without a final chunk")
