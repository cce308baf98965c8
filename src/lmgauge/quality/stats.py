"""Pure statistics over logits: perplexity, KL divergence, top-1 agreement, and the compressed
form a reference's distributions are kept in. No I/O, no llama.cpp: tested on tiny synthetic
logits.

Definitions follow llama.cpp's tools/perplexity/perplexity.cpp so the figures are comparable:
  nll        -log q(next token) at a scored position (natural log)
  PPL        exp(mean nll); its uncertainty ppl * sqrt((mean(nll^2) - mean(nll)^2) / (n - 1))
  KLD        sum_i p_i (log p_i - log q_i): p the reference's distribution, q the variant's
             (KL(reference || variant), per scored position); mean with the same uncertainty
             formula, median, p99 (linear interpolation, as llama.cpp's percentile) and max
  same top   the share of positions where the variant's most likely token is the reference's,
             with sqrt(p (1 - p) / (n - 1))

The compressed reference (`compress`): per position, the reference's top-k tokens and their
log-probabilities, the mass of the remaining "tail" tokens, and the log-probability of the token
that actually came next (it may be outside the top-k). KL divergence from it (`kld_compressed`)
treats the tail as one outcome: KL between the two distributions coarse-grained to k + 1
outcomes. Merging outcomes never increases KL divergence (log-sum inequality), so this is a lower
bound of the full-vocabulary KLD. Measured (benchmarks/quality_topk.py, SmolLM2 Q4_K_M against
its Q4_1 reference, 510 tokens): top-64 gives 95.1% of the full mean KLD and 95.4% of its p99,
top-128 97.0%, top-32 92.2%. llama.cpp's own file is approximate too: it stores 16-bit
log-probabilities and skips tokens below e^-16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ROW_BLOCK = 32  # rows per numpy pass: bounds the temporaries for a 152k-token vocabulary


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities (float32 values, sums in float64)."""
    out = np.empty(logits.shape, dtype=np.float32)
    for start in range(0, logits.shape[0], ROW_BLOCK):
        block = logits[start : start + ROW_BLOCK].astype(np.float32, copy=False)
        top = block.max(axis=1, keepdims=True)
        shifted = block - top
        lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
        out[start : start + ROW_BLOCK] = shifted - lse[:, None].astype(np.float32)
    return out


def token_nll(logp: np.ndarray, next_tokens: np.ndarray) -> np.ndarray:
    """-log q(next token) per row (float64)."""
    return -logp[np.arange(len(next_tokens)), next_tokens].astype(np.float64)


# --- the compressed reference --------------------------------------------------------------------


@dataclass
class Compressed:
    """The reference's distributions at n positions, kept small: top-k ids and log-probs, the
    tail mass, and the log-prob of the token that came next."""

    top_ids: np.ndarray  # (n, k) int32, most likely first
    top_logp: np.ndarray  # (n, k) float32
    tail: np.ndarray  # (n,) float64: 1 - sum of the top-k probabilities
    target_logp: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.tail)


def compress(logp: np.ndarray, next_tokens: np.ndarray, k: int) -> Compressed:
    """Top-k + tail mass of each row of log-probabilities."""
    k = min(k, logp.shape[1])
    part = np.argpartition(-logp, k - 1, axis=1)[:, :k]
    part_logp = np.take_along_axis(logp, part, axis=1)
    order = np.argsort(-part_logp, axis=1, kind="stable")
    top_ids = np.take_along_axis(part, order, axis=1).astype(np.int32)
    top_logp = np.take_along_axis(part_logp, order, axis=1).astype(np.float32)
    tail = tail_mass(logp, top_ids)
    target = logp[np.arange(len(next_tokens)), next_tokens].astype(np.float64)
    return Compressed(top_ids, top_logp, tail, target)


def tail_mass(logp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Probability mass outside `ids` per row, summed directly over the other tokens (not as
    1 - top mass, which loses every digit when the top-k holds nearly all of it)."""
    out = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), ROW_BLOCK):
        p = np.exp(logp[start : start + ROW_BLOCK].astype(np.float64))
        rows = np.arange(p.shape[0])[:, None]
        p[rows, ids[start : start + ROW_BLOCK]] = 0.0
        out[start : start + ROW_BLOCK] = p.sum(axis=1)
    return out


# --- against the reference -----------------------------------------------------------------------


def kld_full(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(reference || variant) per row over the whole vocabulary (float64)."""
    out = np.empty(len(ref_logp), dtype=np.float64)
    for start in range(0, len(ref_logp), ROW_BLOCK):
        p_log = ref_logp[start : start + ROW_BLOCK].astype(np.float64)
        q_log = logp[start : start + ROW_BLOCK].astype(np.float64)
        out[start : start + ROW_BLOCK] = (np.exp(p_log) * (p_log - q_log)).sum(axis=1)
    return out


def kld_compressed(ref: Compressed, logp: np.ndarray) -> np.ndarray:
    """KL(reference || variant) per row, with the reference's tail as one outcome (a lower bound
    of `kld_full`; equal when the tail is empty)."""
    p_log = ref.top_logp.astype(np.float64)
    q_log = np.take_along_axis(logp, ref.top_ids, axis=1).astype(np.float64)
    head = (np.exp(p_log) * (p_log - q_log)).sum(axis=1)
    q_tail = tail_mass(logp, ref.top_ids)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(ref.tail > 0, ref.tail * (np.log(ref.tail) - np.log(np.maximum(q_tail, 1e-300))), 0.0)
    return head + tail


def same_top(ref: Compressed, logp: np.ndarray) -> np.ndarray:
    """Per row: does the variant's most likely token equal the reference's?"""
    return logp.argmax(axis=1) == ref.top_ids[:, 0]


# --- summaries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    uncertainty: float  # one standard error

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_and_uncertainty(values: np.ndarray) -> Estimate:
    """Mean and its standard error sqrt((mean(x^2) - mean(x)^2) / (n - 1)), as llama.cpp computes
    it (0 below 11 values, where it declines to estimate one)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"))
    mean = float(x.mean())
    var = float((x * x).mean() - mean * mean)
    return Estimate(mean, float(np.sqrt(var / (n - 1))) if var > 0 and n > 10 else 0.0)


def perplexity(nll: np.ndarray) -> Estimate:
    """exp(mean nll) and its uncertainty ppl x the standard error of mean nll."""
    x = np.asarray(nll, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"))
    mean = float(x.mean())
    var = float((x * x).mean() - mean * mean)
    ppl = float(np.exp(mean))
    return Estimate(ppl, ppl * float(np.sqrt(var / (n - 1))) if var > 0 and n > 1 else 0.0)


@dataclass(frozen=True)
class Agreement:
    """One variant against the reference, over n scored positions."""

    n: int
    ppl: Estimate
    ppl_ref: Estimate
    ln_ppl_ratio: Estimate  # mean ln(PPL/PPL_ref) with its correlated uncertainty
    kld_mean: Estimate
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: Estimate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(nll: np.ndarray, nll_ref: np.ndarray, kld: np.ndarray, top: np.ndarray) -> Agreement:
    """The summary llama-perplexity prints with --kl-divergence, over every scored position."""
    nll, nll_ref = np.asarray(nll, np.float64), np.asarray(nll_ref, np.float64)
    kld, top = np.asarray(kld, np.float64), np.asarray(top, bool)
    n = len(nll)
    log_ppl, log_ref = mean_and_uncertainty(nll), mean_and_uncertainty(nll_ref)
    cov = 0.0
    if n >= 10:  # llama.cpp's covariance of the two means
        cov = float(((nll * nll_ref).mean() - nll.mean() * nll_ref.mean()) / (n - 1))
    ratio_unc = float(np.sqrt(max(log_ppl.uncertainty**2 + log_ref.uncertainty**2 - 2 * cov, 0.0)))
    p = float(top.mean()) if n else float("nan")
    return Agreement(
        n=n,
        ppl=perplexity(nll),
        ppl_ref=perplexity(nll_ref),
        ln_ppl_ratio=Estimate(log_ppl.value - log_ref.value, ratio_unc),
        kld_mean=mean_and_uncertainty(kld),
        kld_median=float(np.median(kld)) if n else float("nan"),
        kld_p99=float(np.percentile(kld, 99)) if n else float("nan"),
        kld_max=float(kld.max()) if n else float("nan"),
        same_top=Estimate(p, float(np.sqrt(p * (1 - p) / (n - 1))) if n > 1 else 0.0),
    )
