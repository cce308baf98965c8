"""Sentence embeddings, offline by default: memory recall and document search (context/), the
router's similarity to labeled examples, and the semantic cache all use this one module.

One small interface (`Embedder.embed(texts) -> one L2-normalised float32 row per text`, so a dot
product is the cosine similarity), three choices by name:

- `wordllama` (the default): WordLlama's 256-dimension static token embeddings, distilled from
  large LLMs, ~0.05 ms per short text on a CPU. Its weights and tokenizer ship inside the
  `wordllama` wheel, which is what lets recall, routing and caching work with no model server and
  no network.
- any embedding model lmgauge can run: a GGUF embedding model (e.g. all-MiniLM-L6-v2),
  `ollama:nomic-embed-text`, an OpenAI-compatible server, through `Client.embed`.
- `none`: no embeddings (`make_embedder` returns None): search is BM25 only, the cache exact only.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InvalidOptionError


class Embedder(Protocol):
    name: str  # identifies the vectors (stored with them; a different name means re-embed)

    def embed(self, texts: list[str]) -> np.ndarray:
        """A float32 array of shape (len(texts), dim); each row has unit length."""
        ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


class WordLlamaEmbedder:
    """WordLlama loaded from the files inside its own wheel, never from the network.

    `WordLlama.load()` looks for its tokenizer in a folder the wheel does not use (`tokenizer/`
    vs `tokenizers/`) and then downloads it from Hugging Face; pointing `cache_dir` at the
    installed package makes it find both the weights and the tokenizer that the wheel does ship,
    and `disable_download` turns a missing file into an error instead of a silent network call.
    """

    name = "wordllama:l2_supercat:256"

    def __init__(self) -> None:
        import logging

        # wordllama calls logging.basicConfig(level=INFO) when imported, which would make every
        # library's log lines appear on the user's terminal: undo that.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        import wordllama

        root.handlers[:] = handlers
        root.setLevel(level)

        package = Path(wordllama.__file__).parent
        try:
            self._model = wordllama.WordLlama.load(dim=256, cache_dir=package, disable_download=True)
        except (FileNotFoundError, ValueError) as exc:
            raise InvalidOptionError(
                f"wordllama's weights are missing from its installation ({exc}); reinstall it with "
                "`pip install --force-reinstall wordllama`, or configure another embedding model"
            ) from None
        self._lock = threading.Lock()  # the tokenizer is not documented as thread-safe

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        with self._lock:
            vectors = self._model.embed(list(texts))
        return normalise(vectors)


class ClientEmbedder:
    """Any embedding model the Client can run (embedded GGUF, Ollama, OpenAI-compatible)."""

    def __init__(self, client: Any, model: str, batch: int = 32):
        self.client = client
        self.model = model
        self.name = f"model:{model}"
        self.batch = batch

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for i in range(0, len(texts), self.batch):
            rows.extend(self.client.embed(self.model, list(texts[i : i + self.batch])).vectors)
        return normalise(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, 1), np.float32)


@lru_cache(maxsize=1)
def wordllama_embedder() -> WordLlamaEmbedder:
    """One WordLlama per process is plenty (it is read-only); loading takes about a second."""
    return WordLlamaEmbedder()


def make_embedder(name: str, client: Any = None) -> Embedder | None:
    """`wordllama`, `none` (-> None) or a model name served through `client` (a lmgauge Client;
    an unknown model fails here, with the list of what exists)."""
    if name == "none":
        return None
    if name == "wordllama":
        return wordllama_embedder()
    if client is None:
        from .client import Client

        client = Client()
    client.resolve(name)
    return ClientEmbedder(client, name)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)
