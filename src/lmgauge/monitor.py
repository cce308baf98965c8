"""A rolling monitor of served requests: per model p50/p95/p99 of TTFT, TPOT and E2E, tok/s,
error rate and cache hit rate over the last N requests and T seconds (whichever is smaller).

The gateway feeds it one `Sample` per finished request and a gauge reading (queue depth,
in-flight, per model) once a second; /metrics, the dashboard and `lmgauge monitor` read it.
Statistics come from stats.py (the same percentile definition as every benchmark), and
the plots (latency over time, latency histogram) are matplotlib PNGs.

    monitor = Monitor(max_samples=2000, window_s=300)
    monitor.add(Sample(model="smollm2", status="ok", ttft_ms=80.0, e2e_ms=900.0, ...))
    monitor.snapshot()["smollm2"].ttft.p95
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import Summary, summarize, tps_from_tpot


@dataclass(slots=True)
class Sample:
    """One finished request, as the gateway saw it (client-side clock of the gateway)."""

    model: str
    status: str  # ok | error | timeout | busy | cancel | overflow
    ts: float = field(default_factory=time.time)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    cache_hit: bool = False
    context_used: float | None = None  # prompt tokens / window, 0..1
    speculation: Any = None  # types.SpecStats, when the embedded engine speculated

    @property
    def tok_s(self) -> float | None:
        """Output tokens per second over the decode phase (1000 / TPOT)."""
        return tps_from_tpot(self.tpot_ms)


@dataclass
class ModelStats:
    model: str
    n: int
    window_s: float
    requests_per_s: float
    error_rate: float
    cache_hit_rate: float
    ttft: Summary
    tpot: Summary
    e2e: Summary
    tok_s: Summary
    context_used: Summary
    output_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class GaugeReading:
    ts: float
    queued: dict[str, int]
    in_flight: dict[str, int]


class Monitor:
    def __init__(self, max_samples: int = 2000, window_s: float = 300.0, gauge_points: int = 600):
        self.max_samples = max_samples
        self.window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._gauges: deque[GaugeReading] = deque(maxlen=gauge_points)
        self._lock = threading.Lock()

    # --- feeding ---------------------------------------------------------------------------------
    def add(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def record_gauges(self, queued: dict[str, int], in_flight: dict[str, int], ts: float | None = None) -> None:
        with self._lock:
            self._gauges.append(GaugeReading(ts or time.time(), dict(queued), dict(in_flight)))

    # --- reading ---------------------------------------------------------------------------------
    def samples(self, now: float | None = None, model: str | None = None) -> list[Sample]:
        """The samples inside the window (newest last)."""
        cutoff = (now or time.time()) - self.window_s
        with self._lock:
            return [s for s in self._samples if s.ts >= cutoff and (model is None or s.model == model)]

    def gauges(self) -> list[GaugeReading]:
        with self._lock:
            return list(self._gauges)

    def snapshot(self, now: float | None = None) -> dict[str, ModelStats]:
        now = now or time.time()
        by_model: dict[str, list[Sample]] = {}
        for s in self.samples(now):
            by_model.setdefault(s.model, []).append(s)
        return {model: model_stats(model, samples, now) for model, samples in sorted(by_model.items())}

    def timeline(self, bucket_s: float = 5.0, now: float | None = None) -> list[dict[str, Any]]:
        """Per model and time bucket: latency percentiles, tok/s, context use, queue and in-flight
        (the dashboard's charts)."""
        now = now or time.time()
        buckets: dict[tuple[str, int], list[Sample]] = {}
        for s in self.samples(now):
            buckets.setdefault((s.model, int(s.ts // bucket_s)), []).append(s)
        gauges: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for g in self.gauges():
            if g.ts < now - self.window_s:
                continue
            for model in set(g.queued) | set(g.in_flight):
                gauges.setdefault((model, int(g.ts // bucket_s)), []).append(
                    (g.queued.get(model, 0), g.in_flight.get(model, 0))
                )
        rows = []
        for key in sorted(set(buckets) | set(gauges), key=lambda k: (k[1], k[0])):
            model, b = key
            samples = buckets.get(key, [])
            ok = [s for s in samples if s.status == "ok"]
            readings = gauges.get(key, [])
            ttft, e2e = summarize([s.ttft_ms for s in ok]), summarize([s.e2e_ms for s in ok])
            rows.append(
                {
                    "t": b * bucket_s,
                    "model": model,
                    "n": len(samples),
                    "errors": sum(1 for s in samples if s.status != "ok"),
                    "ttft_p50": ttft.p50,
                    "ttft_p95": ttft.p95,
                    "e2e_p50": e2e.p50,
                    "e2e_p95": e2e.p95,
                    "tok_s": summarize([s.tok_s for s in ok]).p50,
                    "context_used": summarize([s.context_used for s in samples]).p50,
                    "queued": max((q for q, _ in readings), default=0),
                    "in_flight": max((f for _, f in readings), default=0),
                }
            )
        return rows


def model_stats(model: str, samples: list[Sample], now: float) -> ModelStats:
    ok = [s for s in samples if s.status == "ok"]
    span = max(now - min(s.ts for s in samples), 1.0) if samples else 1.0
    n = len(samples)
    return ModelStats(
        model=model,
        n=n,
        window_s=span,
        requests_per_s=n / span,
        error_rate=(n - len(ok)) / n if n else 0.0,
        cache_hit_rate=sum(1 for s in samples if s.cache_hit) / n if n else 0.0,
        ttft=summarize([s.ttft_ms for s in ok]),
        tpot=summarize([s.tpot_ms for s in ok]),
        e2e=summarize([s.e2e_ms for s in ok]),
        tok_s=summarize([s.tok_s for s in ok]),
        context_used=summarize([s.context_used for s in samples]),
        output_tokens=sum(s.output_tokens for s in ok),
    )


# --- plots (the seed's latency-over-time and histogram, as PNG) -----------------------------------


def plot_latency_over_time(samples: Iterable[Sample], path: str | Path, metric: str = "e2e_ms") -> Path:
    """One line per model: `metric` of each request against the time it finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 4))
    by_model: dict[str, list[Sample]] = {}
    for s in samples:
        if getattr(s, metric) is not None:
            by_model.setdefault(s.model, []).append(s)
    t0 = min((s.ts for group in by_model.values() for s in group), default=0.0)
    for model, group in sorted(by_model.items()):
        ax.plot([s.ts - t0 for s in group], [getattr(s, metric) for s in group], ".-", label=model, lw=0.8)
    ax.set_xlabel("seconds")
    ax.set_ylabel(metric.replace("_ms", " (ms)").upper())
    ax.set_title(f"{metric.replace('_ms', '').upper()} over time")
    if by_model:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_histogram(samples: Iterable[Sample], path: str | Path, metric: str = "e2e_ms", bins: int = 30) -> Path:
    """Distribution of `metric` per model, with p50/p95/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 4))
    by_model: dict[str, list[float]] = {}
    for s in samples:
        value = getattr(s, metric)
        if value is not None:
            by_model.setdefault(s.model, []).append(value)
    for model, values in sorted(by_model.items()):
        ax.hist(values, bins=bins, alpha=0.6, label=f"{model} (n={len(values)})")
        summary = summarize(values)
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(getattr(summary, q), color="k", ls=style, lw=0.8)
    ax.set_xlabel(metric.replace("_ms", " (ms)").upper())
    ax.set_ylabel("requests")
    ax.set_title(f"{metric.replace('_ms', '').upper()} distribution (lines: p50, p95, p99)")
    if by_model:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- a running gateway, seen from outside (`lmgauge monitor URL`) ---------------------------------


def fetch_stats(url: str, api_key: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The gateway's /api/lmgauge/stats: per model rolling stats, gauges and recent samples."""
    import httpx

    from .errors import EngineUnavailableError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/api/lmgauge/stats", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise EngineUnavailableError(
            f"cannot reach the gateway at {url}: {exc} (is `lmgauge serve` running?)"
        ) from None
    if response.status_code != 200:
        raise EngineUnavailableError(f"{url}/api/lmgauge/stats answered {response.status_code}: {response.text[:200]}")
    return response.json()


def samples_from_stats(stats: dict[str, Any]) -> list[Sample]:
    return [Sample(**s) for s in stats.get("samples", [])]


def stats_table(stats: dict[str, Any]) -> Any:
    """A rich Table of the gateway's per-model rolling stats."""
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"

    table = Table(
        title=f"lmgauge gateway {stats.get('url', '')} — last {stats.get('window_s', 0):.0f}s "
        f"/ {stats.get('max_samples', 0)} requests",
        box=None,
        header_style="bold",
    )
    for column in (
        "model",
        "n",
        "req/s",
        "err %",
        "cache %",
        "TTFT p50/p95/p99 ms",
        "TPOT p50/p95 ms",
        "E2E p50/p95/p99 ms",
        "tok/s p50",
        "ctx %",
        "queue",
        "in flight",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    gauges = stats.get("gauges", {})
    models = sorted(set(stats.get("models", {})) | set(gauges))
    for model in models:
        m = stats.get("models", {}).get(model)
        g = gauges.get(model, {})
        if m is None:
            table.add_row(model, "0", *["-"] * 8, str(g.get("queued", 0)), str(g.get("in_flight", 0)))
            continue
        t, p, e = m["ttft"], m["tpot"], m["e2e"]
        ctx = m["context_used"]["p50"]
        table.add_row(
            model,
            str(m["n"]),
            f"{m['requests_per_s']:.2f}",
            f"{100 * m['error_rate']:.1f}",
            f"{100 * m['cache_hit_rate']:.1f}",
            f"{ms(t['p50'])} / {ms(t['p95'])} / {ms(t['p99'])}",
            f"{ms(p['p50'])} / {ms(p['p95'])}",
            f"{ms(e['p50'])} / {ms(e['p95'])} / {ms(e['p99'])}",
            ms(m["tok_s"]["p50"]),
            "-" if ctx is None else f"{100 * ctx:.0f}",
            str(g.get("queued", 0)),
            str(g.get("in_flight", 0)),
        )
    return table
