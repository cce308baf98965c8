"""The library's front door: names in, results out, whatever engine serves the model.

    from lmgauge import Client
    with Client() as lm:
        result = lm.chat("smollm2", [{"role": "user", "content": "Why is the sky blue?"}],
                         options={"temperature": 0, "num_predict": 64})
        print(result.content, result.timings.ttft_ms, result.timings.decode_tps)

`Client` resolves model names (models.resolve), keeps one engine per kind and server, stamps the
client clock on every stream (engines.base.with_client_clock) and reports results under the name
the caller used.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from .config import Settings, load_settings, parse_duration
from .engines import create_engine
from .engines.base import Engine, collect, with_client_clock
from .errors import InvalidOptionError
from .models import ModelRef, resolve
from .types import (
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
    Speculation,
    Think,
    ToolChoice,
)

MessagesLike = Iterable[Message | dict[str, Any]]
OptionsLike = Options | dict[str, Any] | None


def as_messages(messages: MessagesLike) -> list[Message]:
    return [m if isinstance(m, Message) else Message.from_dict(m) for m in messages]


def as_options(options: OptionsLike) -> Options:
    return options if isinstance(options, Options) else Options.from_dict(options)


def as_keep_alive(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


class Client:
    def __init__(self, settings: Settings | None = None, **overrides: Any):
        self.settings = settings or load_settings(**overrides)
        self._engines: dict[tuple[str, str | None], Engine] = {}
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------
    def resolve(self, model: str | None) -> ModelRef:
        return resolve(model or self.settings.default_model, self.settings)

    def engine(self, ref: ModelRef) -> Engine:
        key = (ref.engine, ref.url)
        with self._lock:
            if key not in self._engines:
                self._engines[key] = create_engine(ref.engine, self.settings, ref.url)
            return self._engines[key]

    def speculation(self, ref: ModelRef) -> Speculation | None:
        """How this model speculates, from the settings (`[speculative]`, `run --draft`): None,
        prompt lookup, or a draft model, resolved here like any model name."""
        config = self.settings.speculative
        source = config.models.get(ref.name)
        if source is None:
            return None
        if ref.engine != "llamacpp":
            raise InvalidOptionError(
                f"speculative decoding is done by the embedded engine; {ref.name} is served "
                f"by {ref.engine} (remove it from [speculative.models])"
            )
        if source == "lookup":
            return Speculation(lookup=True, draft_max=config.draft_max)
        draft = self.resolve(source)
        if draft.engine != "llamacpp":
            raise InvalidOptionError(
                f"the draft model {source} must be a local GGUF model (it runs beside "
                f"{ref.name} in this process), not a model served by {draft.engine}"
            )
        return Speculation(draft=draft.target, draft_max=config.draft_max)

    def _renamed(self, chunks: Iterator[Chunk], ref: ModelRef) -> Generator[Chunk, None, None]:
        for chunk in with_client_clock(chunks):
            if chunk.result is not None:
                chunk.result.model = ref.name
            yield chunk

    # --- generation -----------------------------------------------------------------------------
    def chat_stream(
        self,
        model: str | None,
        messages: MessagesLike,
        *,
        options: OptionsLike = None,
        format: Format = None,
        tools: list[dict[str, Any]] | None = None,
        keep_alive: Any = None,
        tool_choice: ToolChoice = "auto",
        think: Think = None,
    ) -> Generator[Chunk, None, None]:
        """Stream an answer; the last chunk (done=True) carries the Result with its timings.
        Chunks carry answer text (`content`), reasoning (`thinking`) and finished `tool_calls`."""
        ref = self.resolve(model)
        request = ChatRequest(
            model=ref.target,
            messages=as_messages(messages),
            options=as_options(options),
            format=format,
            tools=tools,
            keep_alive=as_keep_alive(keep_alive),
            speculation=self.speculation(ref),
            tool_choice=tool_choice,
            think=think,
        )
        return self._renamed(self.engine(ref).chat(request), ref)

    def chat(self, model: str | None, messages: MessagesLike, **kwargs: Any) -> Result:
        return collect(self.chat_stream(model, messages, **kwargs))

    def generate_stream(
        self,
        model: str | None,
        prompt: str,
        *,
        system: str | None = None,
        raw: bool = False,
        options: OptionsLike = None,
        format: Format = None,
        keep_alive: Any = None,
    ) -> Generator[Chunk, None, None]:
        ref = self.resolve(model)
        request = GenerateRequest(
            model=ref.target,
            prompt=prompt,
            system=system,
            raw=raw,
            options=as_options(options),
            format=format,
            keep_alive=as_keep_alive(keep_alive),
            speculation=self.speculation(ref),
        )
        return self._renamed(self.engine(ref).generate(request), ref)

    def generate(self, model: str | None, prompt: str, **kwargs: Any) -> Result:
        return collect(self.generate_stream(model, prompt, **kwargs))

    # --- everything else ------------------------------------------------------------------------
    def embed(self, model: str | None, inputs: str | list[str]) -> Embeddings:
        ref = self.resolve(model)
        result = self.engine(ref).embed(ref.target, [inputs] if isinstance(inputs, str) else list(inputs))
        result.model = ref.name
        return result

    def tokenize(self, model: str | None, text: str) -> list[int]:
        ref = self.resolve(model)
        return self.engine(ref).tokenize(ref.target, text)

    def detokenize(self, model: str | None, tokens: list[int]) -> str:
        ref = self.resolve(model)
        return self.engine(ref).detokenize(ref.target, tokens)

    def show(self, model: str | None) -> ModelInfo:
        ref = self.resolve(model)
        info = self.engine(ref).info(ref.target)
        info.name, info.source = ref.name, ref.source
        return info

    def list_models(self) -> list[ModelInfo]:
        """Models runnable without a download (embedded engine's sources)."""
        from .models import local_models

        return local_models(self.settings)

    def loaded(self) -> list[LoadedModel]:
        return [m for engine in list(self._engines.values()) for m in engine.loaded()]

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
