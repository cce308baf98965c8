"""The limits every entry point enforces, defined once: option ranges and the context-window rule.

The library (`Options.from_dict`), the CLI (`-o key=value`) and the gateway (`"options": {...}`)
all build options through `types.Options.from_dict`, which calls `check_option` here, so a value
is refused the same way, with the same words, wherever it comes from. A refusal names the value
the user gave (never a rounded or clamped one) and the range it must be in.

`check_prompt_fits` is the context rule the gateway's guard, the embedded engine and the
library's `Client` share: a prompt must leave room for at least one output token. It is never
truncated silently.

This module sits at the bottom of the dependency graph (it imports only errors), so engines,
the library and the gateway can all use it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import ContextOverflowError, InvalidOptionError

# Caps on sizes no machine this runs on can honour; beyond them a value is a mistake (or an
# attack on the gateway), refused before anything is allocated.
MAX_CONTEXT = 1 << 24  # 16M tokens: above every trained context of a GGUF model today
MAX_BATCH = 1 << 16  # tokens per llama_decode call
MAX_PREDICT = 1 << 24


@functools.cache
def max_threads() -> int:
    """Threads a request may ask for: 4 per logical CPU, at least 256 (a remote server may be bigger)."""
    return max(256, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    what: str  # how the rule is said to the user
    special: tuple[float, ...] = ()  # values outside the range that mean something (num_predict -1, -2)
    low_open: bool = False  # low itself is not allowed

    def allows(self, value: float) -> bool:
        if value in self.special:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


# Ollama's Modelfile parameters, with the ranges llama.cpp's samplers and Ollama's runner accept
# (num_thread's depends on the machine: see _range()).
RANGES: dict[str, Range] = {
    "num_ctx": Range(1, MAX_CONTEXT, f"a whole number of tokens from 1 to {MAX_CONTEXT}"),
    "num_predict": Range(
        1, MAX_PREDICT, "at least 1, or -1 (until the model stops) or -2 (until the window is full)", special=(-1, -2)
    ),
    "temperature": Range(0.0, 100.0, "from 0 (greedy) to 100"),
    "top_p": Range(0.0, 1.0, "from 0 to 1"),
    "min_p": Range(0.0, 1.0, "from 0 to 1"),
    "typical_p": Range(0.0, 1.0, "from 0 to 1"),
    "top_k": Range(0, 1 << 31, "0 (off) or a positive number of tokens"),
    "repeat_penalty": Range(0.0, 100.0, "from 0 to 100 (1 = off)"),
    "repeat_last_n": Range(-1, MAX_CONTEXT, "-1 (the whole window), 0 (off) or a number of tokens"),
    "presence_penalty": Range(-100.0, 100.0, "from -100 to 100"),
    "frequency_penalty": Range(-100.0, 100.0, "from -100 to 100"),
    "seed": Range(-(1 << 63), (1 << 64) - 1, "a 64-bit integer (-1: random)"),
    "num_keep": Range(-1, MAX_CONTEXT, "-1 or a number of tokens"),
    "num_batch": Range(1, MAX_BATCH, f"from 1 to {MAX_BATCH} tokens"),
    "num_gpu": Range(-1, 1 << 16, "-1 (auto) or a number of layers"),
    "main_gpu": Range(0, 1 << 10, "a GPU index"),
}


def _range(name: str) -> Range | None:
    if name == "num_thread":  # depends on the machine
        cap = max_threads()
        return Range(1, cap, f"from 1 to {cap}")
    return RANGES.get(name)


def check_option(name: str, value: Any) -> None:
    """Refuse a converted option value outside its range; the message shows the value as given."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    rule = _range(name)
    if rule is None:
        return
    if not rule.allows(value):
        raise InvalidOptionError(f"option {name!r} is out of range: {value!r} (must be {rule.what})")


def check_prompt_fits(prompt_tokens: int, window: int, what: str = "prompt") -> None:
    """The context rule: a prompt must leave room for at least one output token.

    Used by the gateway's guard, the embedded engine, and the library's Client before anything
    is evaluated, so `lmgauge run`, `Client.chat` and `POST /api/chat` refuse the same prompt
    with the same message."""
    if prompt_tokens >= window:
        raise ContextOverflowError(prompt_tokens, window, what=what)


def check_context(num_ctx: int, trained: int | None) -> None:
    """A window the embedded engine can build: at least 16 tokens, at most the trained context."""
    if num_ctx < 16:
        raise InvalidOptionError(f"num_ctx {num_ctx} is too small (minimum 16)")
    if trained and num_ctx > trained:
        raise InvalidOptionError(f"num_ctx {num_ctx} exceeds the model's trained context of {trained} tokens")
