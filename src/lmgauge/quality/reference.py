"""The reference's distributions on disk: written once, chunk by chunk, read by every variant.

A folder per (reference file, corpus, n_ctx, k) under `<home>/quality/reference/`:
  meta.json          what it was computed from (file, size, mtime, corpus sha256, n_ctx, k)
  chunk-00000.npz    one per chunk, zlib-compressed (numpy savez_compressed): the `Compressed`
                     arrays of its scored positions (stats.py) and the chunk's nll
Each chunk file is written to a temporary name and renamed, so an interrupted run leaves only
whole chunks, and the next run computes just the missing ones.

Why top-k and not the full logits (llama-perplexity's --kl-divergence-base file keeps every
token's log-probability in 16 bits): SmolLM2 has 49,152 tokens and Qwen2.5 151,936, so a full
row is 96-300 KB per scored token, ~1 GB for 4,000 tokens of Qwen; 64 ids + log-probs + tail is
~0.5 KB before compression.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .stats import Compressed


@dataclass(frozen=True)
class ReferenceKey:
    path: str
    size: int
    mtime_ns: int
    corpus_sha256: str
    n_ctx: int
    top_k: int

    def folder_name(self) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]
        return f"{Path(self.path).stem}-ctx{self.n_ctx}-k{self.top_k}-{digest}"


class ReferenceStore:
    def __init__(self, root: Path, key: ReferenceKey):
        self.key = key
        self.folder = root / key.folder_name()
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "meta.json"
        if not meta.exists():
            meta.write_text(json.dumps(key.__dict__, indent=2))

    def _chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:05d}.npz"

    def has(self, i: int) -> bool:
        return self._chunk_path(i).exists()

    def write(self, i: int, ref: Compressed, nll: np.ndarray) -> None:
        path = self._chunk_path(i)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, top_ids=ref.top_ids, top_logp=ref.top_logp, tail=ref.tail, target_logp=ref.target_logp, nll=nll
        )
        os.replace(tmp, path)

    def read(self, i: int) -> tuple[Compressed, np.ndarray]:
        with np.load(self._chunk_path(i)) as z:
            ref = Compressed(z["top_ids"], z["top_logp"], z["tail"], z["target_logp"])
            return ref, z["nll"]

    def disk_bytes(self, chunks: int | None = None) -> int:
        files = (
            [self._chunk_path(i) for i in range(chunks)]
            if chunks is not None
            else list(self.folder.glob("chunk-*.npz"))
        )
        return sum(p.stat().st_size for p in files if p.exists())

    def describe(self, chunks: int) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "chunks": chunks,
            "disk_bytes": self.disk_bytes(chunks),
            "top_k": self.key.top_k,
        }
