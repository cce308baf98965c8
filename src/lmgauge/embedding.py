"""Sentence embeddings for the router (similarity to labeled examples) and the semantic cache.

Two sources behind one small interface (`Embedder.embed(texts) -> unit vectors, one row each`):

- `wordllama` (the default): static token embeddings distilled from large LLMs, 256 dimensions,
  weights shipped inside the `wordllama` wheel, ~0.05 ms per short text on a CPU. It needs no
  model server and no network, which is what lets routing and caching work out of the box.
- any embedding model lmgauge can run (`nomic-embed-text` in Ollama, a GGUF file, an
  OpenAI-compatible server), through `Client.embed`.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InvalidOptionError


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """A float32 array of shape (len(texts), dim); each row has unit length."""
        ...


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class WordLlamaEmbedder:
    """WordLlama loaded from the files inside its own wheel, never from the network.

    `WordLlama.load()` looks for its tokenizer in a folder the wheel does not use and then
    downloads it from Hugging Face; pointing `cache_dir` at the installed package makes it find
    both the weights and the tokenizer that the wheel does ship, and `disable_download` turns a
    missing file into an error instead of a silent network call.
    """

    name = "wordllama"

    def __init__(self) -> None:
        import wordllama

        package_dir = Path(wordllama.__file__).parent
        try:
            self._model = wordllama.WordLlama.load(cache_dir=package_dir, disable_download=True)
        except FileNotFoundError as exc:
            raise InvalidOptionError(
                f"wordllama's weights are missing from its installation ({exc}); "
                "reinstall it with `pip install --force-reinstall wordllama`"
            ) from None
        self._lock = threading.Lock()  # the tokenizer is not documented as thread-safe

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        with self._lock:
            vectors = self._model.embed(list(texts), norm=True)
        return _unit_rows(vectors)


class ClientEmbedder:
    """Any embedding model lmgauge can run, through a Client."""

    def __init__(self, client: Any, model: str):
        self.client = client
        self.name = model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return _unit_rows(np.asarray(self.client.embed(self.name, list(texts)).vectors))


@lru_cache(maxsize=1)
def wordllama_embedder() -> WordLlamaEmbedder:
    """One WordLlama per process is plenty (it is read-only); loading takes about a second."""
    return WordLlamaEmbedder()


def make_embedder(name: str, client: Any = None) -> Embedder:
    """`wordllama`, or a model name served through `client` (a lmgauge Client)."""
    if name == "wordllama":
        return wordllama_embedder()
    if client is None:
        from .client import Client

        client = Client()
    return ClientEmbedder(client, name)
