"""Exact token counts for a conversation, with the model's own tokenizer and chat template.

A conversation costs more than the sum of its texts: the chat template wraps every message in
role markers (`<|im_start|>user\\n ... <|im_end|>\\n`), may add a default system prompt and a
generation prompt. `GGUFTokens` renders the GGUF's template and tokenizes the result with the
model's vocabulary, so the count is the one the engine will evaluate, to the token.

For a model served remotely (Ollama, an OpenAI-compatible server) we use a local GGUF of the
same model when one resolves (Ollama's blob store, the Hugging Face cache, a configured folder).
Otherwise `ServerTokens` takes the server's own counts after each request (prompt_eval_count /
usage.prompt_tokens) and, for messages it has not seen counted yet, an upper bound: a token
covers at least one UTF-8 byte in byte-level BPE and SentencePiece vocabularies, so the byte
length never undercounts. Such a budget says `exact=False`. Words or characters/4 are never used.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UnknownModelError
from ..types import Message

if TYPE_CHECKING:
    from ..client import Client
    from ..engines.llamacpp import LlamaCppEngine

# Upper bound on the template's own tokens per message when the template is unknown: role
# markers, separators and newlines take 3-6 tokens in every common template (ChatML, Llama 3,
# Gemma, Mistral); 8 leaves room.
UNKNOWN_TEMPLATE_TOKENS_PER_MESSAGE = 8
UNKNOWN_TEMPLATE_TOKENS_FIXED = 16


class TokenCounter(Protocol):
    """Counts what a prompt costs. `exact` is False when counts are upper bounds."""

    exact: bool

    def count(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        """Tokens of the whole prompt, template and generation prompt included."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of a piece of text on its own (no template)."""
        ...


def prefix_fingerprints(messages: list[Message]) -> list[str]:
    """Stable hashes of messages[:1], messages[:2], ... (role, content, tool calls), in one pass."""
    h = hashlib.sha256()
    out = []
    for m in messages:
        h.update(json.dumps(m.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\x00")
        out.append(h.hexdigest())
    return out


def fingerprint(messages: list[Message]) -> str:
    """A stable hash of a message list, for caches."""
    return prefix_fingerprints(messages)[-1] if messages else hashlib.sha256().hexdigest()


class GGUFTokens:
    """Exact counts from a GGUF: its vocabulary and its chat template (no weights loaded)."""

    exact = True

    def __init__(self, engine: LlamaCppEngine, path: str, cache_size: int = 256):
        self.engine = engine
        self.path = path
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def count(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        key = fingerprint(messages) + (json.dumps(tools, sort_keys=True) if tools else "")
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        n = len(self.engine.chat_tokens(self.path, messages, tools))
        self._cache[key] = n
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return n

    def count_text(self, text: str) -> int:
        return len(self.engine.tokenize(self.path, text)) if text else 0


class ServerTokens:
    """Counts for a remote model with no local tokenizer: exact for prompts the server has
    counted (`observe`), an upper bound for anything new."""

    exact = False

    def __init__(self, cache_size: int = 1024):
        self._known: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def observe(self, messages: list[Message], prompt_tokens: int) -> None:
        """Record the server's own count for this prompt (from a Result's timings)."""
        if prompt_tokens > 0:
            self._known[fingerprint(messages)] = prompt_tokens
            if len(self._known) > self._cache_size:
                self._known.popitem(last=False)

    def count(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        # The longest prefix the server has counted, plus an upper bound for the rest. (The
        # generation prompt is counted inside a known prefix, so it is a slight overcount.)
        prefixes = prefix_fingerprints(messages)
        for cut in range(len(messages), 0, -1):
            known = self._known.get(prefixes[cut - 1])
            if known is not None:
                return known + self._upper_bound(messages[cut:])
        extra = len(json.dumps(tools).encode()) if tools else 0
        return UNKNOWN_TEMPLATE_TOKENS_FIXED + self._upper_bound(messages) + extra

    def count_text(self, text: str) -> int:
        return len(text.encode("utf-8"))

    @staticmethod
    def _upper_bound(messages: list[Message]) -> int:
        total = 0
        for m in messages:
            total += UNKNOWN_TEMPLATE_TOKENS_PER_MESSAGE + len(m.content.encode("utf-8"))
            if m.tool_calls:
                total += len(json.dumps(m.tool_calls).encode("utf-8"))
        return total


def counter_for(client: Client, model: str) -> TokenCounter:
    """The most exact counter available for a model (see the module docstring for the order)."""
    from ..engines.llamacpp import LlamaCppEngine
    from ..models import resolve

    ref = client.resolve(model)
    if ref.engine == "llamacpp":
        engine = client.engine(ref)
        assert isinstance(engine, LlamaCppEngine)
        return GGUFTokens(engine, ref.target)
    try:  # the same model as a local GGUF (Ollama's store, HF cache, model_dirs)
        local = resolve(ref.target, client.settings)
    except UnknownModelError:
        local = None
    if local is not None and local.engine == "llamacpp":
        engine = client.engine(local)
        assert isinstance(engine, LlamaCppEngine)
        return GGUFTokens(engine, local.target)
    return ServerTokens()
