"""lmgauge.quality's statistics on tiny synthetic logits, checked against direct computations
of the definitions (llama-perplexity's) and against known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmgauge.errors import InvalidOptionError
from lmgauge.quality import stats
from lmgauge.quality.corpus import make_chunks


def _logits(seed: int, n: int = 40, vocab: int = 50, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, vocab)) * scale).astype(np.float32)


def test_log_softmax_rows_are_normalised_log_probabilities():
    logits = _logits(0)
    logp = stats.log_softmax(logits)
    assert np.allclose(np.exp(logp.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)
    # shift invariance: adding a constant to a row changes nothing
    assert np.allclose(stats.log_softmax(logits + 100.0), logp, atol=1e-4)


def test_perplexity_and_its_standard_error_follow_llama_perplexity():
    nll = np.array([1.0, 2.0, 3.0, 0.5, 1.5] * 3)
    ppl = stats.perplexity(nll)
    mean = nll.mean()
    assert ppl.value == pytest.approx(math.exp(mean))
    # llama.cpp: ppl * sqrt((mean(nll^2) - mean^2) / (n - 1))
    expected = math.exp(mean) * math.sqrt(((nll**2).mean() - mean**2) / (len(nll) - 1))
    assert ppl.uncertainty == pytest.approx(expected)


def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary():
    logp = stats.log_softmax(np.zeros((10, 37), dtype=np.float32))
    nll = stats.token_nll(logp, np.arange(10))
    assert stats.perplexity(nll).value == pytest.approx(37, rel=1e-5)


def test_kld_is_zero_for_identical_and_positive_for_different_distributions():
    p = stats.log_softmax(_logits(1))
    q = stats.log_softmax(_logits(2))
    assert np.allclose(stats.kld_full(p, p), 0.0, atol=1e-6)
    assert (stats.kld_full(p, q) > 0).all()


def test_kld_full_matches_the_definition_row_by_row():
    p = stats.log_softmax(_logits(3, n=3, vocab=6)).astype(np.float64)
    q = stats.log_softmax(_logits(4, n=3, vocab=6)).astype(np.float64)
    for i in range(3):
        direct = sum(math.exp(p[i, j]) * (p[i, j] - q[i, j]) for j in range(6))
        assert stats.kld_full(p, q)[i] == pytest.approx(direct, abs=1e-6)


def test_compressed_reference_with_the_whole_vocabulary_is_exact():
    p = stats.log_softmax(_logits(5))
    q = stats.log_softmax(_logits(6))
    nxt = np.arange(40) % 50
    ref = stats.compress(p, nxt, k=50)
    assert np.allclose(ref.tail, 0.0, atol=1e-12)
    assert np.allclose(stats.kld_compressed(ref, q), stats.kld_full(p, q), atol=1e-5)


def test_compressed_reference_is_a_tight_lower_bound_for_peaked_distributions():
    # language-model-like: a few likely tokens, a long tail
    p = stats.log_softmax(_logits(7, vocab=2000, scale=6.0))
    q = stats.log_softmax(_logits(7, vocab=2000, scale=6.0) + _logits(8, vocab=2000, scale=0.3))
    nxt = np.zeros(40, dtype=np.int64)
    ref = stats.compress(p, nxt, k=64)
    full, approx = stats.kld_full(p, q), stats.kld_compressed(ref, q)
    assert (approx <= full + 1e-6).all()  # coarse-graining never increases KL divergence
    assert approx.mean() == pytest.approx(full.mean(), rel=0.05)


def test_compress_keeps_the_top_k_in_order_the_tail_mass_and_the_target():
    logp = stats.log_softmax(np.array([[0.0, 3.0, 1.0, 2.0, -1.0]], dtype=np.float32))
    ref = stats.compress(logp, np.array([4]), k=2)
    assert ref.top_ids.tolist() == [[1, 3]]
    probs = np.exp(logp[0].astype(np.float64))
    assert ref.tail[0] == pytest.approx(probs[[0, 2, 4]].sum())
    assert ref.target_logp[0] == pytest.approx(logp[0, 4])


def test_same_top_compares_the_argmax():
    p = stats.log_softmax(np.array([[0, 5, 1], [4, 0, 0]], dtype=np.float32))
    q = stats.log_softmax(np.array([[0, 6, 1], [0, 3, 0]], dtype=np.float32))
    ref = stats.compress(p, np.array([0, 0]), k=2)
    assert stats.same_top(ref, q).tolist() == [True, False]


def test_agreement_summary():
    rng = np.random.default_rng(0)
    nll_ref = rng.gamma(2.0, 1.0, size=500)
    nll = nll_ref + rng.normal(0.05, 0.05, size=500)
    kld = rng.exponential(0.01, size=500)
    top = rng.random(500) < 0.9
    a = stats.agreement(nll, nll_ref, kld, top)
    assert a.n == 500
    assert a.kld_mean.value == pytest.approx(kld.mean())
    assert a.kld_median == pytest.approx(np.median(kld))
    assert a.kld_p99 == pytest.approx(np.percentile(kld, 99))
    assert a.kld_max == pytest.approx(kld.max())
    assert a.same_top.value == pytest.approx(top.mean())
    assert a.same_top.uncertainty == pytest.approx(math.sqrt(top.mean() * (1 - top.mean()) / 499))
    assert a.ln_ppl_ratio.value == pytest.approx(nll.mean() - nll_ref.mean())
    # the two perplexities move together, so the ratio is known far better than either
    assert a.ln_ppl_ratio.uncertainty < stats.mean_and_uncertainty(nll).uncertainty / 5


def test_chunks_follow_llama_perplexity():
    tokens = list(range(100, 100 + 70))
    chunks = make_chunks(tokens, 16, None, bos=1)
    assert chunks.count == 4 and chunks.available == 4
    assert chunks.tokens[0].tolist() == [1] + list(range(101, 116))  # BOS replaces the first token
    assert chunks.tokens[1, 1:].tolist() == list(range(117, 132))
    assert chunks.first == 8 and chunks.scored_per_chunk == 7
    assert chunks.next_tokens(0).tolist() == list(range(109, 116))
    assert make_chunks(tokens, 16, 2, bos=None).tokens[0, 0] == 100
    with pytest.raises(InvalidOptionError, match="at least 32"):
        make_chunks(tokens[:20], 16, None, bos=None)


def test_verdicts_pick_the_lowest_kld_that_fits_and_compare_its_speed(smollm2_path):
    from lmgauge.quality.report import verdicts
    from lmgauge.quality.results import Row

    def row(label: str, kv: str, kld: float, tps: float) -> Row:
        return Row(
            label=label,
            weights="Q4_1",
            kv_type=kv,
            path=smollm2_path,
            file_size=1,
            bits_per_weight=5.7,
            quality={"kld_mean": {"value": kld, "uncertainty": 0.0}},
            decode_tps=tps,
        )

    rows = [row("slow but close", "f16", 0.01, 50.0), row("fast but far", "q4_0", 0.05, 60.0)]
    (v,) = verdicts(rows, [1 << 30], 8192)
    assert v["best"] == "slow but close" and v["fastest"] == "fast but far"
    assert v["slowdown_vs_fastest"] == pytest.approx(1.2)
    assert (
        v["text"]
        == "fits in 1.00 GiB at 8192 ctx: best quality is slow but close, KLD 0.0100, 1.20x slower than fast but far"
    )
    # at 8192 tokens the f16 cache (~180 MiB for SmolLM2) does not fit 250 MiB but q4_0's does
    (v,) = verdicts(rows, [250 << 20], 8192)
    assert v["fits"] == ["fast but far"] and "also the fastest" in v["text"]
    (v,) = verdicts(rows, [1 << 20], 8192)
    assert "nothing measured fits" in v["text"]
    # default budgets: powers of two around the predictions
    assert [d["budget_bytes"] for d in verdicts(rows, None, 8192)] == [128 << 20, 256 << 20, 512 << 20]
