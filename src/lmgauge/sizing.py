"""Memory sizing: what the embedded engine will hold in RAM for a model and a window,
predicted from the GGUF header alone (nothing is loaded), and the largest window that fits.

The model follows how llama.cpp (as vendored by llama-cpp-python 0.3.36) allocates on the
CPU backend, and how `engines.llamacpp.Runner` configures it: one context with
n_ctx = num_ctx * n_parallel cells in one KV stream per sequence, n_batch = n_ubatch, flash
attention "auto" (on, for CPU), llama.cpp's default full-size sliding-window cache, and the
scheduler asking for logits of at most one token per sequence per step.

Parts (all bytes; see `estimate`):
  weights   every tensor in the file: mmap'd, and llama.cpp pre-faults the mapping, so the
            pages are resident as soon as the model is loaded; plus the anonymous copy the CPU
            backend makes of the weights it "repacks" into interleaved layouts (Q4_0, Q4_K,
            Q2_K, IQ4_NL matrices on x86-64 AVX2 / ARM): the mmap'd original stays mapped too.
  kv        the KV cache buffer, exactly as llama.cpp sizes it (it zeroes it, so it is resident).
  compute   the compute-buffer pages the engine's worst step touches (a full ubatch with the
            window full) plus the CPU backend's work buffer. llama.cpp reserves more address
            space than that (`compute_reserved_bytes`, the "compute buffer size" it logs), since
            it plans for the worst graph; the engine limits logits to one row per sequence
            (llama.cpp's n_outputs_max), which keeps that reservation small.
  output    the logits buffer: one row of n_vocab floats per sequence.
  overhead  what the rest of a loaded model costs: llama.cpp's tokenizer tables (per token and
            per BPE merge), the loader's transient heap, threads, code pages, Python objects.

All coefficients below were calibrated against llama.cpp's own logged buffer sizes and the
measured RSS of the engine process (benchmarks/sizing_accuracy.py) on SmolLM2-135M (llama),
Qwen2.5-0.5B (qwen2) and Gemma-3-270M (gemma3, sliding window); Qwen2.5-1.5B was held out.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from .errors import InvalidOptionError
from .models import GGUFInfo

# --- llama.cpp's allocation rules ---------------------------------------------------------------

# llama_context rounds the context up to a multiple of 256 cells (GGML_PAD(n_ctx, 256)).
N_CTX_PAD = 256
# max_context answers in these steps, so an answer is never padded up by llama.cpp.
CTX_STEP = 256
# The window max_context stops at for a model whose file does not state its trained context.
DEFAULT_CTX_LIMIT = 131072

# (block size, bytes per block) of the KV cache types the engine offers: f16 = 2 B/element;
# q8_0 = 32 int8 + one f16 scale = 34 B per 32 (1.0625 B); q4_0 = 16 B of nibbles + scale = 18 B
# per 32 (0.5625 B).
KV_TYPE_BLOCKS = MappingProxyType({"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)})

# Weight types llama.cpp's CPU backend copies into an interleaved "CPU_REPACK" buffer when the
# CPU has the kernels (x86-64 with AVX2, ARM64 with dotprod/i8mm): matrices used by MUL_MAT
# whose row count is a multiple of 8. Seen here: every Q4_K matrix of a Q4_K_M file.
REPACK_TYPES = frozenset({"Q4_0", "Q4_K", "Q2_K", "IQ4_NL"})
REPACK_ROWS = 8

# Which layers use sliding-window attention, by architecture, when the file does not say:
# llama.cpp's hparams.set_swa_pattern(n): layer il slides unless il % n == n - 1.
SWA_PATTERNS = MappingProxyType({"gemma2": 2, "gemma3": 6, "cohere2": 4, "gpt-oss": 2, "exaone4": 4})

# Bytes per element of the activations the CPU work buffer holds for a quantized matmul
# (the input converted to q8_K: 292 B per 256 values, the widest of q8_0/q8_1/q8_K).
WORK_BYTES_PER_ELEMENT = 292 / 256

# Overhead: what RSS grows by beyond the buffers above, solved from the engine's measured RSS
# growth on SmolLM2 (49k tokens, 49k BPE merges), Qwen2.5-0.5B (152k, 151k) and Gemma-3-270M
# (262k tokens, SentencePiece: no merges), then checked on Qwen2.5-1.5B. Basis: llama_vocab keeps,
# per token, its text, score and attributes, a text->id hash-map entry and a token->piece cache
# entry (~175 B); per BPE merge, a node of a map keyed by the pair of strings (~140 B).
# OVERHEAD_RUNTIME is the rest, the same for every model: libllama code pages first touched
# while loading (~2.5 MiB of RssFile), the loader's transient heap, ggml contexts, the thread
# pool, the runner's Python objects (template, scheduler, batch).
OVERHEAD_PER_TOKEN = 175
OVERHEAD_PER_MERGE = 140
OVERHEAD_RUNTIME = 5 << 20

F32 = 4


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """A memory prediction for one model and configuration (bytes). `total_bytes` is what the
    engine process's RSS grows by when it loads the model and runs its worst step."""

    # inputs
    model: str
    architecture: str
    num_ctx: int  # tokens per sequence, as asked
    n_parallel: int
    kv_type: str
    n_batch: int
    flash_attn: bool
    # what llama.cpp derives from them
    n_ctx: int  # KV cells allocated: num_ctx * n_parallel rounded up to 256
    n_ubatch: int  # tokens per compute step: min(n_batch, n_ctx)
    # the parts
    weights_bytes: int
    repack_bytes: int  # included in weights_bytes
    kv_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    total_bytes: int
    compute_reserved_bytes: int  # llama.cpp's logged "compute buffer size" (address space)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- public functions ---------------------------------------------------------------------------


def estimate(
    info: GGUFInfo,
    num_ctx: int,
    kv_type: str = "f16",
    n_parallel: int = 1,
    n_batch: int = 512,
    flash_attn: bool = True,
    *,
    kv_unified: bool = False,
    swa_full: bool = True,
    cpu_repack: bool = True,
    n_outputs: int | None = None,
) -> MemoryEstimate:
    """Predict the memory of `info`'s model loaded with a `num_ctx`-token window per sequence.

    Defaults match the embedded engine: one KV stream per sequence, llama.cpp's full-size
    sliding-window cache (`swa_full`), CPU repacking of Q4 weights (`cpu_repack`; pass False on
    CPUs without AVX2/NEON kernels). `n_batch` is the engine's n_batch (= n_ubatch). `n_outputs` is the rows
    of logits one step may ask for: one per sequence (the default), more when the engine
    verifies speculative drafts (every drafted token needs its own row).
    """
    _check_options(info, num_ctx, kv_type, n_parallel, n_batch, flash_attn)
    n_ctx = _pad(num_ctx * n_parallel, N_CTX_PAD)
    n_ubatch = min(max(n_batch, n_parallel), n_ctx)  # the engine raises n_batch to n_parallel
    n_out = max(n_outputs or n_parallel, n_parallel)

    repack = repack_bytes(info) if cpu_repack else 0
    weights = info.tensor_bytes + repack
    kv = kv_cache_bytes(info, n_ctx, kv_type, n_parallel, n_ubatch, kv_unified=kv_unified, swa_full=swa_full)
    caches = kv_cache_sizes(info, n_ctx, n_parallel, n_ubatch, kv_unified=kv_unified, swa_full=swa_full)
    # The engine's worst step: a full ubatch with the window full, logits for one token per
    # sequence. The engine sets llama.cpp's n_outputs_max to n_parallel, so llama.cpp reserves
    # logits space for that many rows too (its default, n_batch rows, reserved 98 MiB more for
    # SmolLM2 that was never touched).
    compute = compute_buffer_bytes(info, n_ubatch, caches, n_out, flash_attn, kv_type)
    compute += work_buffer_bytes(info, n_ubatch)
    reserved = compute_buffer_bytes(info, n_ubatch, caches, n_out, flash_attn, kv_type)
    output = n_out * info.n_vocab * F32
    overhead = overhead_bytes(info)
    total = weights + kv + compute + output + overhead
    return MemoryEstimate(
        model=info.name or info.path,
        architecture=info.architecture,
        num_ctx=num_ctx,
        n_parallel=n_parallel,
        kv_type=kv_type,
        n_batch=n_batch,
        flash_attn=flash_attn,
        n_ctx=n_ctx,
        n_ubatch=n_ubatch,
        weights_bytes=weights,
        repack_bytes=repack,
        kv_bytes=kv,
        compute_bytes=compute,
        output_bytes=output,
        overhead_bytes=overhead,
        total_bytes=total,
        compute_reserved_bytes=reserved,
    )


def max_context(
    info: GGUFInfo,
    budget_bytes: int,
    kv_type: str = "f16",
    n_parallel: int = 1,
    n_batch: int = 512,
    flash_attn: bool = True,
    *,
    kv_unified: bool = False,
    swa_full: bool = True,
    cpu_repack: bool = True,
) -> int:
    """The largest num_ctx (a multiple of 256, at most the model's trained context) whose
    estimate fits in `budget_bytes`. Raises InvalidOptionError, saying how much memory the
    smallest window needs, when not even that fits. The options are `estimate`'s."""
    options = {"kv_unified": kv_unified, "swa_full": swa_full, "cpu_repack": cpu_repack}
    limit = info.n_ctx_train or DEFAULT_CTX_LIMIT
    # Windows offered: multiples of CTX_STEP up to the limit (a model trained on fewer tokens
    # than one step is offered its whole context).
    steps = limit // CTX_STEP

    def window(k: int) -> int:
        return k * CTX_STEP if steps else limit

    def fits(n: int) -> bool:
        return estimate(info, n, kv_type, n_parallel, n_batch, flash_attn, **options).total_bytes <= budget_bytes

    if not fits(window(1)):
        need = estimate(info, window(1), kv_type, n_parallel, n_batch, flash_attn, **options)
        per_seq = f" x {n_parallel} sequences" if n_parallel > 1 else ""
        raise InvalidOptionError(
            f"{need.model} does not fit in {format_size(budget_bytes)}: even a {window(1)}-token "
            f"window{per_seq} needs {format_size(need.total_bytes)} (weights "
            f"{format_size(need.weights_bytes)}, KV cache {format_size(need.kv_bytes)}, buffers and "
            f"runtime {format_size(need.compute_bytes + need.output_bytes + need.overhead_bytes)}); "
            "raise the budget, or use a smaller quantization, kv_type or model"
        )
    # The estimate never shrinks as num_ctx grows, so bisect over the steps.
    lo, hi = 1, max(steps, 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(window(mid)):
            lo = mid
        else:
            hi = mid - 1
    return window(lo)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = MappingProxyType(
    {
        "": 1,
        "b": 1,
        # IEC binary units, and bare letters read as binary like Docker's `-m 2g` and `free -g`
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gib": 1 << 30,
        "t": 1 << 40,
        "tib": 1 << 40,
        # SI decimal units
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
    }
)


def parse_size(value: str | int) -> int:
    """Bytes from a size: an int, or "4GiB", "512MB", "2G", "1.5 GiB", "1048576".

    KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024; kB/MB/GB/TB are powers of 1000.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidOptionError(f"invalid size {value!r}; use bytes or e.g. 4GiB, 512MB, 2G")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit is None or unit not in _SIZE_UNITS:
            raise InvalidOptionError(
                f"invalid size {value!r}; use bytes or a number with a unit: "
                "KiB, MiB, GiB, TiB (or K, M, G, T), kB, MB, GB, TB (e.g. 4GiB, 512MB, 2G)"
            )
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise InvalidOptionError(f"invalid size {value!r}: it must be more than 0 bytes")
    return size


def format_size(n: int) -> str:
    """Human-readable binary size for messages: 1536 -> "1.50 KiB"."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --- the parts ----------------------------------------------------------------------------------


def kv_cells(
    info: GGUFInfo,
    n_ctx: int,
    n_parallel: int = 1,
    n_ubatch: int = 512,
    *,
    kv_unified: bool = False,
    swa_full: bool = True,
) -> list[int]:
    """KV cells per layer, all sequences together (llama.cpp's kv_size x streams; n_ctx is
    already padded to 256).

    Per-sequence caches (kv_unified=False) give each of the n_parallel streams
    pad(n_ctx / n_parallel, 256) cells. A sliding-window layer gets, per stream,
    pad(min(stream cells, n_swa x sequences sharing the stream + n_ubatch), 256) cells, unless
    swa_full (llama.cpp's default, which the engine keeps) gives it the full stream.
    """
    streams = 1 if kv_unified else n_parallel
    per_stream = n_ctx if kv_unified else _pad(n_ctx // n_parallel, N_CTX_PAD)
    n_swa = info.sliding_window or 0
    if swa_full or not n_swa:
        swa_per_stream = per_stream
    else:
        seqs_per_stream = n_parallel if kv_unified else 1
        swa_per_stream = _pad(min(per_stream, n_swa * seqs_per_stream + n_ubatch), N_CTX_PAD)
    return [streams * (swa_per_stream if sliding else per_stream) for sliding in swa_layers(info)]


def kv_cache_sizes(
    info: GGUFInfo,
    n_ctx: int,
    n_parallel: int = 1,
    n_ubatch: int = 512,
    *,
    kv_unified: bool = False,
    swa_full: bool = True,
) -> list[int]:
    """Cells per stream of each distinct KV cache llama.cpp creates: one cache, or two for a
    model with sliding-window layers (global and sliding), each with its own attention mask of
    n_kv x n_tokens (with per-sequence streams, each stream's mask covers its share of the
    ubatch, so the masks add up to stream cells x n_tokens)."""
    cells = kv_cells(info, n_ctx, n_parallel, n_ubatch, kv_unified=kv_unified, swa_full=swa_full)
    streams = 1 if kv_unified else n_parallel
    swa = swa_layers(info)
    if any(swa) and not all(swa):
        return [cells[swa.index(False)] // streams, cells[swa.index(True)] // streams]
    return [(cells[0] if cells else n_ctx) // streams]


def kv_cache_bytes(
    info: GGUFInfo,
    n_ctx: int,
    kv_type: str = "f16",
    n_parallel: int = 1,
    n_ubatch: int = 512,
    *,
    kv_unified: bool = False,
    swa_full: bool = True,
) -> int:
    """The KV cache buffer: for each layer, cells x (n_head_kv x head_dim_k + n_head_kv x
    head_dim_v) elements of `kv_type`. With uniform layers and f16 this is DESIGN.md's
    2 x n_layer x n_ctx x n_head_kv x head_dim x 2 B (n_ctx counting every sequence)."""
    block, block_bytes = _kv_block(kv_type)
    heads = _per_layer(info, "attention.head_count_kv", info.n_head_kv)
    cells = kv_cells(info, n_ctx, n_parallel, n_ubatch, kv_unified=kv_unified, swa_full=swa_full)
    total = 0
    for n_cells, n_kv_heads in zip(cells, heads, strict=False):
        k_row = n_kv_heads * info.head_dim_k // block * block_bytes
        v_row = n_kv_heads * info.head_dim_v // block * block_bytes
        total += n_cells * (k_row + v_row)
    return total


def compute_buffer_bytes(
    info: GGUFInfo,
    n_tokens: int,
    kv_sizes: list[int],
    n_outputs: int,
    flash_attn: bool = True,
    kv_type: str = "f16",
) -> int:
    """Peak of llama.cpp's compute buffer for one step of `n_tokens` tokens, `n_outputs` of which
    produce logits, attending over KV caches of `kv_sizes` cells (one entry per distinct cache:
    two for sliding-window models).

    Basis: ggml-alloc places a step's tensors in one buffer, reusing memory as tensors die, so its
    size is the largest set of activations alive at once (measured against llama.cpp's logged
    "compute buffer size" at n_tokens 32..2048, n_ctx 256..98304, 1-4 sequences, with and without
    flash attention, for llama, qwen2 and gemma3; within 1% of the logged figure but for the
    allocator's occasional fragmentation, up to +4 MiB):
      - attention masks, alive the whole step: one per distinct cache, n_kv x n_tokens,
        f16 with flash attention, f32 without;
      - the feed-forward block: gate, up and their product (n_tokens x n_ff f32 each) next to the
        residual stream, the normalized input and the attention output, which is n_head x
        head_dim wide (wider than n_embd in gemma3): 3 n_ff + 3 n_embd + max(n_embd, n_q);
        one n_embd-wide tensor fewer with a quantized KV cache (measured: -1.08 MiB for SmolLM2,
        -2.92 MiB for Qwen2.5-1.5B at 512 tokens);
      - without flash attention, the score matrix n_kv x n_tokens x n_head f32 next to Q, K, V
        and the residual stream: n_head n_kv + 4 n_embd + max(n_embd, n_q) + 2 n_k;
      - the output layer: n_outputs x n_vocab logits f32 plus two n_tokens x n_embd tensors
        (the masks are dead by then).
    """
    n_kv = max(kv_sizes)
    mask_elem = 2 if flash_attn else F32
    masks = sum(size * n_tokens * mask_elem for size in kv_sizes)
    n_embd, n_ff = info.n_embd, _n_ff(info)
    n_q = info.n_head * info.head_dim_k
    n_k = info.n_head_kv * info.head_dim_k
    ffn_width = 3 * n_ff + (3 if kv_type == "f16" else 2) * n_embd + max(n_embd, n_q)
    ffn = n_tokens * F32 * ffn_width + masks
    peak = ffn
    if not flash_attn:
        attn = n_tokens * F32 * (info.n_head * n_kv + 4 * n_embd + max(n_embd, n_q) + 2 * n_k) + masks
        peak = max(peak, attn)
    logits = min(n_outputs, n_tokens) * info.n_vocab * F32 + 2 * n_tokens * n_embd * F32
    return max(peak, logits)


def work_buffer_bytes(info: GGUFInfo, n_tokens: int) -> int:
    """The CPU backend's work buffer: a matmul's input converted to the weights' dot-product
    type, at most n_tokens x n_ff (the feed-forward down projection)."""
    return math.ceil(n_tokens * max(_n_ff(info), info.n_embd) * WORK_BYTES_PER_ELEMENT)


def repack_bytes(info: GGUFInfo) -> int:
    """Bytes of the weights the CPU backend copies into its repacked buffer (see REPACK_TYPES).
    The token embedding is only gathered from (GET_ROWS), never multiplied, so it stays put."""
    total = 0
    for t in info.tensors:
        if (
            t.type in REPACK_TYPES
            and len(t.shape) >= 2
            and t.shape[1] % REPACK_ROWS == 0
            and not t.name.startswith("token_embd")
        ):
            total += t.nbytes
    return total


def overhead_bytes(info: GGUFInfo) -> int:
    """Tokenizer tables and runtime (see OVERHEAD_*)."""
    return OVERHEAD_RUNTIME + OVERHEAD_PER_TOKEN * info.n_vocab + OVERHEAD_PER_MERGE * info.n_merges


def swa_layers(info: GGUFInfo) -> list[bool]:
    """Per layer: does it use sliding-window attention? From the file's
    `<arch>.attention.sliding_window_pattern` when present, else llama.cpp's per-architecture
    pattern; a model with a window but no known pattern counts as all-global (an overestimate)."""
    n = info.n_layer
    if not info.sliding_window:
        return [False] * n
    pattern = info.metadata.get(f"{info.architecture}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n:
        return [bool(p) for p in pattern]
    period = (
        pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else SWA_PATTERNS.get(info.architecture)
    )
    if not period:
        return [False] * n
    return [il % period < period - 1 for il in range(n)]


# --- helpers ------------------------------------------------------------------------------------


def _check_options(info: GGUFInfo, num_ctx: int, kv_type: str, n_parallel: int, n_batch: int, flash_attn: bool) -> None:
    if not isinstance(num_ctx, int) or num_ctx < 1:
        raise InvalidOptionError(f"num_ctx must be a positive number of tokens, not {num_ctx!r}")
    if not isinstance(n_parallel, int) or n_parallel < 1:
        raise InvalidOptionError(f"parallel must be at least 1, not {n_parallel!r}")
    if not isinstance(n_batch, int) or n_batch < 1:
        raise InvalidOptionError(f"n_batch must be at least 1, not {n_batch!r}")
    block, _ = _kv_block(kv_type)
    if kv_type != "f16" and not flash_attn:
        # llama.cpp refuses to create the context: "quantized V cache ... requires Flash Attention"
        raise InvalidOptionError(f"kv_type {kv_type} needs flash attention; use kv_type f16 or flash_attn on")
    for name, dim in (("key", info.head_dim_k), ("value", info.head_dim_v)):
        if (info.n_head_kv * dim) % block:
            raise InvalidOptionError(
                f"kv_type {kv_type} needs {name} rows that are a multiple of {block} values; "
                f"{info.name or info.path} has {info.n_head_kv * dim}: use kv_type f16"
            )


def _kv_block(kv_type: str) -> tuple[int, int]:
    try:
        return KV_TYPE_BLOCKS[kv_type]
    except KeyError:
        raise InvalidOptionError(f"unknown kv_type {kv_type!r}; use one of {', '.join(KV_TYPE_BLOCKS)}") from None


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def _per_layer(info: GGUFInfo, suffix: str, default: int) -> list[int]:
    """A hyperparameter per layer: GGUF stores some (head_count_kv, feed_forward_length) either
    as one number or as an array with one entry per layer."""
    value = info.metadata.get(f"{info.architecture}.{suffix}")
    if isinstance(value, list) and len(value) == info.n_layer:
        return [int(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)] * info.n_layer
    return [default] * info.n_layer


def _n_ff(info: GGUFInfo) -> int:
    """The feed-forward width that sets the activation peak. For mixture-of-experts models the
    active experts' widths add up (n_expert_used x expert width); not calibrated on an MoE model."""
    arch = info.architecture
    dense = max(_per_layer(info, "feed_forward_length", 0), default=0)
    n_used = info.metadata.get(f"{arch}.expert_used_count")
    expert_ff = info.metadata.get(f"{arch}.expert_feed_forward_length")
    if isinstance(n_used, int) and n_used > 0:
        moe = n_used * int(expert_ff or dense or 4 * info.n_embd)
        return max(dense, moe)
    return dense or 4 * info.n_embd
