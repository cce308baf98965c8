"""The llama.cpp side of a quality pass: one model file loaded with one KV-cache type, fed the
corpus chunk by chunk, handing back the raw logits of the positions that are scored.

Why its own loader rather than the engine's `Runner`: the engine asks llama.cpp for one row of
logits per sequence per step (that is what generation needs, and what keeps its buffers small);
perplexity needs a row for every scored position of a chunk, so this context is built with
n_batch = n_ubatch = the chunk length and logits requested for the second half of each chunk.
Every other parameter follows the engine (flash attention "auto", threads = physical cores,
the KV type under test), so what is measured is what the engine would compute.

Every llama.cpp call runs on the one compute thread (engines/compute.py): `Scorer` methods may
be called from any thread and hop there themselves.
"""

from __future__ import annotations

import ctypes
from types import TracebackType
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from ..engines import compute
from ..engines.llamacpp import FLASH_ATTN, KV_TYPES, _init_backend, default_threads
from ..errors import EngineError, InvalidOptionError, ModelFileError


class Scorer:
    """A model file + a context of `n_ctx` cells with `kv_type`, ready to score chunks.

    with Scorer(path, 512, "q8_0") as s:
        logits = s.chunk_logits(tokens, first=256)   # (n_ctx - 1 - first, n_vocab) float32
    """

    def __init__(
        self, path: str, n_ctx: int, kv_type: str = "f16", threads: int | None = None, flash_attn: str = "auto"
    ):
        if kv_type not in KV_TYPES:
            raise InvalidOptionError(f"unknown KV type {kv_type!r}; use one of {', '.join(KV_TYPES)}")
        _init_backend()
        self.path, self.n_ctx, self.kv_type = path, n_ctx, kv_type
        self.model = None
        self.ctx = None
        compute.call(self._load, threads or default_threads(), flash_attn)

    def _load(self, threads: int, flash_attn: str) -> None:
        mparams = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(self.path.encode(), mparams)
        if not self.model:
            raise ModelFileError(f"llama.cpp could not load {self.path} (unsupported architecture or corrupt file)")
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_ctx  # a whole chunk in one llama_decode
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = FLASH_ATTN[flash_attn]
        cparams.type_k = cparams.type_v = KV_TYPES[self.kv_type]
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            L.llama_model_free(self.model)
            self.model = None
            raise EngineError(
                f"llama.cpp could not create a {self.n_ctx}-token context with KV type {self.kv_type} for {self.path}"
            )
        self.vocab: Any = L.llama_model_get_vocab(self.model)
        self.n_vocab: int = L.llama_vocab_n_tokens(self.vocab)
        self.bos: int | None = L.llama_vocab_bos(self.vocab) if L.llama_vocab_get_add_bos(self.vocab) else None

    def chunk_logits(self, tokens: list[int] | np.ndarray, first: int) -> np.ndarray:
        """Decode one chunk (len(tokens) == n_ctx, the BOS substitution already done) from an
        empty cache; return a copy of the logits at positions first .. n_ctx - 2, the positions
        whose next token is scored (float32, one row per position)."""
        if len(tokens) != self.n_ctx or not 0 < first < self.n_ctx - 1:
            raise ValueError(f"a chunk is {self.n_ctx} tokens and first in 1..{self.n_ctx - 2}")
        return compute.call(self._decode, [int(t) for t in tokens], first)

    def _decode(self, tokens: list[int], first: int) -> np.ndarray:
        n = len(tokens)
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = first <= i <= n - 2
            batch.n_tokens = n
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                raise EngineError(f"llama.cpp failed to decode a {n}-token chunk (code {rc})")
            rows = n - 1 - first
            ptr = L.llama_get_logits(self.ctx)  # the output rows, in batch order
            view = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(rows, self.n_vocab))
            return view.copy()  # the buffer is reused by the next decode
        finally:
            L.llama_batch_free(batch)

    def tokenize(self, text: str) -> list[int]:
        """The whole text, with BOS when the model wants it (llama-perplexity's common_tokenize(..., true))."""
        from ..engines.llamacpp import tokenize

        return tokenize(self.vocab, text, add_special=True)

    def close(self) -> None:
        if self.ctx is not None or self.model is not None:
            compute.call(self._free)

    def _free(self) -> None:
        if self.ctx is not None:
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            L.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
