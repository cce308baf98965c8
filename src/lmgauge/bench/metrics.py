"""Pure functions over measured samples. No I/O, no clocks: easy to test on known sets.

The per-request figures and the summaries (TTFT, TPOT, ITL, tok/s, percentiles) are defined
once in lmgauge/stats.py and re-exported here; this module adds what only benchmarks need:
goodput, cost-curve fits, the saturation point, run-against-run comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..stats import PERCENTILES, Summary, clean, percentile, pooled_itl, summarize, tpot_ms

__all__ = [  # the first seven live in lmgauge/stats.py
    "PERCENTILES",
    "Summary",
    "clean",
    "percentile",
    "pooled_itl",
    "summarize",
    "tpot_ms",
    "Comparison",
    "CostFit",
    "bootstrap_delta_ci",
    "compare_samples",
    "fit_cost_curve",
    "goodput",
    "saturation_index",
]


def goodput(samples: list[dict[str, Any]], duration_s: float, slo: dict[str, float]) -> float:
    """Requests per second that succeeded AND met every SLO bound (e.g. {"ttft_ms": 500,
    "tpot_ms": 50}); a metric that is undefined for a request (None) does not violate its bound."""
    if duration_s <= 0:
        return 0.0
    good = 0
    for s in samples:
        if s.get("status", "ok") != "ok":
            continue
        if all(s.get(metric) is None or s[metric] <= bound for metric, bound in slo.items()):
            good += 1
    return good / duration_s


# --- cost curves (context sweep) -------------------------------------------------------------------


@dataclass(frozen=True)
class CostFit:
    """t(n) = a + b*n + c*n^2, least squares over every measured (n, t) sample.

    `b` is the per-token cost (weights: linear in n), `c` the per-token-pair cost (attention:
    each token attends to all before it). `quadratic_share_at(n)` says how much of t(n) the n^2
    term explains, `exponent` is the slope of log t over log n (1 = linear, 2 = quadratic).
    """

    a: float
    b: float
    c: float
    r2: float
    n: int
    exponent: float | None
    points: int = 0  # distinct context sizes (the fit has 3 parameters)

    @property
    def exact(self) -> bool:
        """3 parameters through 3 context sizes: the curve meets every size's mean by construction,
        so R² only reflects the spread of repetitions at each size, not how well the shape fits."""
        return self.points <= 3

    def predict(self, n: float) -> float:
        return self.a + self.b * n + self.c * n * n

    def quadratic_share_at(self, n: float) -> float | None:
        total = self.predict(n)
        return self.c * n * n / total if total > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact": self.exact}


def fit_cost_curve(n_tokens: Sequence[float | None], values: Sequence[float | None]) -> CostFit:
    """Fit t = a + b n + c n^2 (and the log-log slope) to samples; needs >= 3 distinct n."""
    pairs = [(float(n), float(t)) for n, t in zip(n_tokens, values, strict=True) if t is not None and n]
    x = np.asarray([p[0] for p in pairs])
    y = np.asarray([p[1] for p in pairs])
    if len(set(x.tolist())) < 3:
        raise ValueError("a quadratic cost curve needs samples at 3 or more context sizes")
    design = np.column_stack([np.ones_like(x), x, x * x])
    (a, b, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([a, b, c])
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0
    positive = y > 0
    exponent = None
    if positive.sum() >= 2 and len(set(x[positive].tolist())) >= 2:
        exponent = float(np.polyfit(np.log(x[positive]), np.log(y[positive]), 1)[0])
    return CostFit(float(a), float(b), float(c), r2, len(x), exponent, points=len(set(x.tolist())))


# --- load curves -----------------------------------------------------------------------------------


def saturation_index(
    throughput: list[float | None],
    latency: list[float | None],
    min_gain: float = 0.10,
    min_latency_rise: float = 0.10,
) -> int | None:
    """The load level where the system saturates: the last level before one that adds less than
    `min_gain` (10%) throughput while its latency climbs by more than `min_latency_rise` (10%).
    Levels are in increasing order of offered load. None: no such level (not saturated yet)."""
    for i in range(1, len(throughput)):
        t0, t1, l0, l1 = throughput[i - 1], throughput[i], latency[i - 1], latency[i]
        if not t0 or t1 is None or not l0 or l1 is None:
            continue
        if t1 / t0 - 1 < min_gain and l1 / l0 - 1 > min_latency_rise:
            return i - 1
    return None


# --- comparing two sets of samples -----------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """B against A for one metric: medians, relative delta of the medians, Mann-Whitney U
    p-value, and a bootstrap confidence interval of the relative delta."""

    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    delta: float | None  # (median_b - median_a) / median_a
    p_value: float | None
    ci_low: float | None  # bootstrap CI of delta; None when there are too few samples to mean anything
    ci_high: float | None
    significant: bool
    # The smallest p-value the two-sided Mann-Whitney U test can give with these sample sizes
    # (2 / C(n_a + n_b, n_a)): at 2 vs 2 it is 0.33, so no difference could ever be significant.
    min_p: float | None = None
    too_few: bool = False  # min_p >= alpha: the test cannot decide at this n; no verdict, no interval
    agree: bool = True  # the test and the interval say the same (both significant, or both not)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_samples(
    a: list[float | None],
    b: list[float | None],
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Is B different from A? Significant when the two-sided Mann-Whitney U test gives p < alpha
    (rank-based: no normality assumed, robust to outliers, the test benchstat uses) and the
    bootstrap CI of the delta excludes 0 (both agree, so a verdict never contradicts its CI).

    With so few samples that the test could not reach alpha whatever the data (`too_few`), there
    is no verdict and no interval: a bootstrap interval over 2 values per side only shows how
    those values fell. When the test and the interval disagree, `agree` is False (the verdict is
    then "unclear", never "no change")."""
    xa, xb = np.asarray(clean(a)), np.asarray(clean(b))
    if len(xa) == 0 or len(xb) == 0:
        return Comparison(len(xa), len(xb), None, None, None, None, None, None, False)
    ma, mb = float(np.median(xa)), float(np.median(xb))
    delta = (mb - ma) / ma if ma else None
    min_p = min(1.0, 2 / math.comb(len(xa) + len(xb), len(xa)))
    if min_p >= alpha:
        return Comparison(len(xa), len(xb), ma, mb, delta, None, None, None, False, min_p=min_p, too_few=True)
    from scipy.stats import mannwhitneyu  # imported here: scipy takes a while to load

    p = float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    lo, hi = bootstrap_delta_ci(xa, xb, conf=1 - alpha, n_boot=n_boot, seed=seed) if ma else (None, None)
    ci_excludes_zero = lo is None or hi is None or lo > 0 or hi < 0
    test_says = p < alpha
    return Comparison(
        len(xa),
        len(xb),
        ma,
        mb,
        delta,
        p,
        lo,
        hi,
        test_says and ci_excludes_zero,
        min_p=min_p,
        agree=test_says == ci_excludes_zero,
    )


def bootstrap_delta_ci(
    a: Any, b: Any, conf: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of (median(b) - median(a)) / median(a), resampling both sets."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(xa, size=(n_boot, len(xa))), axis=1)
    mb = np.median(rng.choice(xb, size=(n_boot, len(xb))), axis=1)
    ok = ma != 0
    if not ok.any():
        return None, None
    deltas = (mb[ok] - ma[ok]) / ma[ok]
    tail = (1 - conf) / 2 * 100
    lo, hi = np.percentile(deltas, [tail, 100 - tail])
    return float(lo), float(hi)
