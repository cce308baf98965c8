"""Pure functions over measured samples. No I/O, no clocks: easy to test on known sets.

Percentiles use linear interpolation between closest ranks (numpy's default, "linear"), the
same definition vLLM's benchmark scripts and most dashboards use; n is always reported beside
them because a p99 of 5 samples is just the maximum.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    sd: float | None  # sample standard deviation (n - 1); None for n < 2
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean(values: list[float | None]) -> list[float]:
    """Drop None and NaN (a metric undefined for a sample, e.g. TPOT with one output token)."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def percentile(values: list[float | None], q: float) -> float | None:
    data = clean(values)
    if not data:
        return None
    return float(np.percentile(np.asarray(data), q))


def summarize(values: list[float | None]) -> Summary:
    data = clean(values)
    if not data:
        return Summary(0, None, None, None, None, None, None, None, None)
    arr = np.asarray(data)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return Summary(len(arr), float(arr.mean()), sd, float(arr.min()), float(arr.max()), p50, p90, p95, p99)


def tpot_ms(ttft_ms: float, e2e_ms: float, output_tokens: int) -> float | None:
    """TPOT: (E2E - TTFT) / (output_tokens - 1); undefined below 2 tokens."""
    if output_tokens < 2:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def pooled_itl(per_request_itl: list[list[float]]) -> list[float]:
    """ITL pooled across requests: every gap between successive chunks of every request."""
    return [gap for gaps in per_request_itl for gap in gaps]


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
