"""The reference: a bare loop over llama-cpp-python's low-level API, with nothing of lmgauge in it.

Benchmarks run lmgauge and this loop on the same model, prompt and settings, alternating, and
print the ratio. It is written the way the llama.cpp examples are (simple.cpp, batched.cpp):
llama_decode + greedy argmax over the logits, one KV sequence per stream.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import llama_cpp.llama_cpp as L
import numpy as np


@L.llama_log_callback
def _quiet(level, text, user_data):  # noqa: ANN001 - ctypes callback
    pass


@dataclass
class BareRun:
    prompt_tokens: int
    output_tokens: int
    ttft_ns: int  # start (tokenize) -> first token sampled
    decode_ns: int  # first token -> last token
    prefill_ns: int  # prompt decode only

    @property
    def decode_tps(self) -> float:
        return (self.output_tokens - 1) / (self.decode_ns / 1e9) if self.output_tokens > 1 else 0.0


class BareLlama:
    def __init__(
        self,
        path: str,
        n_ctx: int,
        threads: int,
        n_seq: int = 1,
        n_batch: int = 512,
        flash_attn: int = -1,
        kv_unified: bool = False,  # one KV stream per sequence, as the engine
    ):
        L.llama_log_set(_quiet, ctypes.c_void_p(0))
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = cp.n_ubatch = max(n_batch, n_seq)
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = flash_attn
        cp.kv_unified = kv_unified
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.mem = L.llama_get_memory(self.ctx)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        return list(buf[:n])

    def _add(self, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
        b.seq_id[i][0] = seq

    def _argmax(self, i: int) -> int:
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return int(logits.argmax())

    def prefill(self, tokens: list[int], seq: int = 0, pos0: int = 0) -> int:
        """Evaluate a prompt on one sequence in n_batch chunks; returns the first sampled token."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            for i, tok in enumerate(chunk):
                self._add(i, tok, pos0 + start + i, seq, start + i == len(tokens) - 1)
            self.batch.n_tokens = len(chunk)
            if L.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
        return self._argmax((len(tokens) - 1) % self.n_batch)  # row of the last prompt token

    def generate(self, prompt: str, max_tokens: int) -> BareRun:
        """One stream: clear the cache, prefill, greedy-decode until EOG or max_tokens."""
        t0 = time.perf_counter_ns()
        tokens = self.tokenize(prompt)
        L.llama_memory_clear(self.mem, True)
        tok = self.prefill(tokens)
        t_first = time.perf_counter_ns()
        out, pos = 0, len(tokens)
        t_last = t_first
        while not L.llama_vocab_is_eog(self.vocab, tok):
            out += 1
            t_last = time.perf_counter_ns()
            if out >= max_tokens:
                break
            self._add(0, tok, pos, 0, True)
            self.batch.n_tokens = 1
            L.llama_decode(self.ctx, self.batch)
            pos += 1
            tok = self._argmax(0)
        return BareRun(len(tokens), out, t_first - t0, t_last - t_first, t_first - t0)

    def generate_batch(self, prompts: list[list[int]], max_tokens: int) -> tuple[int, int, int]:
        """Several streams, one sequence each, decoded together: one llama_decode per step.
        Returns (total output tokens, decode ns, decode steps)."""
        L.llama_memory_clear(self.mem, True)
        nexts = [self.prefill(p, seq=s) for s, p in enumerate(prompts)]
        pos = [len(p) for p in prompts]
        alive = [not L.llama_vocab_is_eog(self.vocab, t) for t in nexts]
        produced = [1 if a else 0 for a in alive]
        t0 = time.perf_counter_ns()
        steps = 0
        while any(alive):
            rows = []
            for s, tok in enumerate(nexts):
                if alive[s] and produced[s] < max_tokens:
                    self._add(len(rows), tok, pos[s], s, True)
                    rows.append(s)
                else:
                    alive[s] = False
            if not rows:
                break
            self.batch.n_tokens = len(rows)
            L.llama_decode(self.ctx, self.batch)
            steps += 1
            for i, s in enumerate(rows):
                pos[s] += 1
                nexts[s] = self._argmax(i)
                if L.llama_vocab_is_eog(self.vocab, nexts[s]):
                    alive[s] = False
                else:
                    produced[s] += 1
        return sum(produced), time.perf_counter_ns() - t0, steps

    def close(self) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def on_llama_thread(fn, *args, **kwargs):
    """Run a bare-loop call (construction, generate, generate_batch) on the one thread that runs
    llama.cpp in this process, as lmgauge's engine does: this llama.cpp build uses OpenMP, and a
    second thread computing in the same process slows every model ~3x (lmgauge/engines/compute.py).
    One hand-off per call, not per token; the loop itself is unchanged."""
    from lmgauge.engines import compute

    return compute.call(lambda: fn(*args, **kwargs))
