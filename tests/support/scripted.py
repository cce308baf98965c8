"""A scripted engine for unit tests: the Engine protocol with canned answers and no model.

It streams a given text word by word (each word one "token"), can sleep between tokens and
can fail after N tokens, so code above the engine (stats, CLI, bench, gateway) is tested
without llama.cpp. Real-model behaviour is covered by the integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from lmgauge.errors import EngineError, UnknownModelError
from lmgauge.types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    ModelInfo,
    Result,
    Timings,
)


class ScriptedEngine:
    name = "scripted"

    def __init__(
        self,
        answer: str | Callable[[str], str] = "one two three four five",
        token_delay_s: float = 0.0,
        fail_after: int | None = None,
        models: tuple[str, ...] = ("scripted",),
    ):
        self.answer = answer
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after
        self.models = models
        self.requests: list[ChatRequest | GenerateRequest] = []

    def _text(self, prompt: str) -> str:
        return self.answer(prompt) if callable(self.answer) else self.answer

    def _stream(self, model: str, prompt: str, num_predict: int | None) -> Iterator[Chunk]:
        if model not in self.models:
            raise UnknownModelError(model, list(self.models))
        t0 = time.perf_counter_ns()
        words = self._text(prompt).split(" ")
        if num_predict and num_predict > 0:
            words = words[:num_predict]
        t_first = t_last = t0
        for i, word in enumerate(words):
            if self.fail_after is not None and i >= self.fail_after:
                raise EngineError("scripted failure")
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            t_last = time.perf_counter_ns()
            if i == 0:
                t_first = t_last
            yield Chunk(content=word if i == 0 else " " + word)
        timings = Timings(
            prompt_tokens=len(prompt.split()),
            prompt_eval_ns=t_first - t0,
            output_tokens=len(words),
            eval_ns=t_last - t_first,
            total_ns=time.perf_counter_ns() - t0,
        )
        yield Chunk(
            done=True,
            result=Result(model=model, content=" ".join(words), done_reason="stop", timings=timings, engine=self.name),
        )

    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        self.requests.append(request)
        prompt = " ".join(m.content for m in request.messages)
        return self._stream(request.model, prompt, request.options.num_predict)

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        self.requests.append(request)
        return self._stream(request.model, request.prompt, request.options.num_predict)

    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        return Embeddings(model=model, vectors=[[1.0, 0.0] for _ in inputs])

    def tokenize(self, model: str, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    def detokenize(self, model: str, tokens: list[int]) -> str:
        return " ".join("x" * t for t in tokens)

    def info(self, model: str) -> ModelInfo:
        return ModelInfo(name=model, engine=self.name, source="script")

    def list_models(self) -> list[ModelInfo]:
        return [self.info(m) for m in self.models]

    def loaded(self) -> list[LoadedModel]:
        return []

    def unload(self, model: str) -> None:
        pass

    def close(self) -> None:
        pass
