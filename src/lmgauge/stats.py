"""Every derived figure, defined once: TTFT, E2E, TPOT, ITL, tok/s, percentiles and summaries.

The definitions are DESIGN.md's, stated here next to the arithmetic; Timings (types.py), the
benchmarks (bench/), the gateway's metrics and request log (gateway/core.py) and the rolling
monitor (monitor.py) all call these, so a figure means the same wherever it is shown.

    TTFT   request sent -> first non-empty content chunk received
    E2E    request sent -> last chunk received
    TPOT   (E2E - TTFT) / (output_tokens - 1): the first token comes out of the prompt pass, so
           the time after it is spent on the other output_tokens - 1; undefined below 2 tokens
    ITL    gaps between successive content chunks, pooled across requests
    prefill tok/s   prompt tokens actually evaluated / prompt eval time (cache hits are not work)
    decode tok/s    decode steps (output_tokens - 1) / decode time, i.e. 1000 / TPOT

Percentiles use linear interpolation between closest ranks (numpy's default, "linear"), the
same definition vLLM's benchmark scripts and most dashboards use; n is always reported beside
them because a p99 of 5 samples is just the maximum. Pure functions: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


# --- one request --------------------------------------------------------------------------------


def span_ms(start_ns: int | None, end_ns: int | None) -> float | None:
    """Milliseconds between two perf_counter_ns stamps (TTFT: sent -> first token; E2E: sent ->
    last chunk); None when either end was never reached."""
    if start_ns is None or end_ns is None:
        return None
    return (end_ns - start_ns) / 1e6


def per_output_token_ms(decode_ms: float | None, output_tokens: int) -> float | None:
    """Time per output token after the first: `decode_ms` spans output_tokens - 1 steps.
    TPOT on the client clock is per_output_token_ms(E2E - TTFT, n); on the engine clock,
    per_output_token_ms(eval time, n)."""
    if decode_ms is None or output_tokens < 2:
        return None
    return decode_ms / (output_tokens - 1)


def tpot_ms(ttft_ms: float | None, e2e_ms: float | None, output_tokens: int) -> float | None:
    """TPOT: (E2E - TTFT) / (output_tokens - 1); undefined below 2 tokens."""
    if ttft_ms is None or e2e_ms is None:
        return None
    return per_output_token_ms(e2e_ms - ttft_ms, output_tokens)


def itl_ms(chunk_ns: list[int]) -> list[float]:
    """ITL of one request: the gaps between its successive content chunks."""
    return [(b - a) / 1e6 for a, b in pairwise(chunk_ns)]


def pooled_itl(per_request_itl: list[list[float]]) -> list[float]:
    """ITL pooled across requests: every gap between successive chunks of every request."""
    return [gap for gaps in per_request_itl for gap in gaps]


def prefill_tps(evaluated_tokens: int, prompt_eval_ns: int | None) -> float | None:
    """Prompt tokens actually evaluated / prompt eval time (cache hits are not work done)."""
    if not prompt_eval_ns or not evaluated_tokens:
        return None
    return evaluated_tokens / (prompt_eval_ns / 1e9)


def decode_tps(output_tokens: int, eval_ns: int | None) -> float | None:
    """Output tokens / decode time. The engine's eval time runs from the first output token to the
    last, so it spans output_tokens - 1 decode steps (the first token comes out of the prompt
    pass): the rate is those steps over that time, exactly 1000 / TPOT on the engine clock."""
    if not eval_ns or output_tokens < 2:
        return None
    return (output_tokens - 1) / (eval_ns / 1e9)


def tps_from_tpot(tpot: float | None) -> float | None:
    """Decode tokens per second from a TPOT in ms (1000 / TPOT)."""
    return 1000.0 / tpot if tpot else None


# --- many requests ------------------------------------------------------------------------------


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


def clean(values: Sequence[float | None]) -> list[float]:
    """Drop None and NaN (a metric undefined for a sample, e.g. TPOT with one output token)."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def percentile(values: Sequence[float | None], q: float) -> float | None:
    data = clean(values)
    if not data:
        return None
    return float(np.percentile(np.asarray(data), q))


def summarize(values: Sequence[float | None]) -> Summary:
    data = clean(values)
    if not data:
        return Summary(0, None, None, None, None, None, None, None, None)
    arr = np.asarray(data)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return Summary(len(arr), float(arr.mean()), sd, float(arr.min()), float(arr.max()), p50, p90, p95, p99)
