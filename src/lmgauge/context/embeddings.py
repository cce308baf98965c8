"""Sentence embeddings for recall and document search, offline by default.

- `wordllama` (default): WordLlama's 256-dimension model, whose weights and tokenizer ship inside
  the `wordllama` wheel. We load them from the package folder with downloads disabled: WordLlama
  looks for its tokenizer in a folder name that does not match the one it ships (`tokenizer/` vs
  `tokenizers/`), so pointing its cache_dir at the package is what makes it load with no network.
- any model lmgauge can run that embeds: a GGUF embedding model (e.g. all-MiniLM-L6-v2), or
  `ollama:nomic-embed-text`, through `Client.embed`.
- `none`: no embeddings; search is BM25 only.

Vectors are L2-normalised float32 rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import InvalidOptionError

if TYPE_CHECKING:
    from ..client import Client


class Embedder(Protocol):
    name: str  # identifies the vectors (stored with them; a different name means re-embed)

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


class WordLlamaEmbedder:
    name = "wordllama:l2_supercat:256"

    def __init__(self) -> None:
        import logging
        from pathlib import Path

        # wordllama calls logging.basicConfig(level=INFO) when imported, which would make every
        # library's log lines appear on the user's terminal: undo that.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        import wordllama
        from wordllama import WordLlama

        root.handlers[:] = handlers
        root.setLevel(level)

        package = Path(wordllama.__file__).parent
        try:
            self._model = WordLlama.load(dim=256, cache_dir=package, disable_download=True)
        except (FileNotFoundError, ValueError) as exc:
            raise InvalidOptionError(
                f"the wordllama package has no bundled weights ({exc}); reinstall it, or set "
                "context.embed_model to a GGUF embedding model or 'none'"
            ) from None

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        return normalise(self._model.embed(texts))


class ClientEmbedder:
    """Any embedding model the Client can run (embedded GGUF, Ollama, OpenAI-compatible)."""

    def __init__(self, client: Client, model: str, batch: int = 32):
        self.client = client
        self.model = model
        self.name = f"model:{model}"
        self.batch = batch

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for i in range(0, len(texts), self.batch):
            rows.extend(self.client.embed(self.model, texts[i : i + self.batch]).vectors)
        return normalise(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, 1), np.float32)


def make_embedder(name: str, client: Client | None = None) -> Embedder | None:
    """`wordllama`, `none` (-> None: BM25 only) or a model name for `Client.embed`."""
    if name == "none":
        return None
    if name == "wordllama":
        return WordLlamaEmbedder()
    if client is None:
        raise InvalidOptionError(f"embedding model {name!r} needs a Client")
    client.resolve(name)  # unknown model: fail now, with the list of what exists
    return ClientEmbedder(client, name)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)
