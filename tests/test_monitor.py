"""The rolling monitor: windows by count and by time, per-model statistics that agree with
bench.metrics, the timeline the dashboard draws, and the PNG plots."""

from __future__ import annotations

import pytest

from lmgauge.bench.metrics import summarize
from lmgauge.monitor import Monitor, Sample, plot_histogram, plot_latency_over_time, stats_table


def sample(model="m", status="ok", ts=1000.0, e2e=100.0, ttft=10.0, tokens=10, cache=False, used=0.5):
    tpot = (e2e - ttft) / (tokens - 1) if tokens > 1 and e2e is not None else None
    return Sample(
        model=model,
        status=status,
        ts=ts,
        ttft_ms=ttft,
        tpot_ms=tpot,
        e2e_ms=e2e,
        prompt_tokens=20,
        output_tokens=tokens,
        cache_hit=cache,
        context_used=used,
    )


def test_window_is_bounded_by_count_and_by_time():
    m = Monitor(max_samples=5, window_s=60)
    for i in range(10):
        m.add(sample(ts=1000.0 + i, e2e=float(i)))
    assert [s.e2e_ms for s in m.samples(now=1010)] == [5.0, 6.0, 7.0, 8.0, 9.0]  # the last 5 by count
    assert [s.e2e_ms for s in m.samples(now=1066.5)] == [7.0, 8.0, 9.0]  # ... and only the last 60 s


def test_snapshot_statistics_per_model():
    m = Monitor(max_samples=100, window_s=1000)
    e2e = [50.0, 70.0, 90.0, 110.0, 400.0]
    for i, v in enumerate(e2e):
        m.add(sample(ts=1000.0 + i, e2e=v, cache=i == 0))
    m.add(sample(ts=1003.0, status="error", e2e=None, ttft=None))
    m.add(sample(model="other", ts=1004.0))
    snap = m.snapshot(now=1010.0)
    s = snap["m"]
    assert s.n == 6 and s.error_rate == pytest.approx(1 / 6) and s.cache_hit_rate == pytest.approx(1 / 6)
    assert s.e2e == summarize(e2e)  # errors carry no latency; the same percentiles as benchmarks
    assert s.tpot.p50 == pytest.approx((90.0 - 10.0) / 9)
    assert s.tok_s.p50 == pytest.approx(1000 / s.tpot.p50)
    assert s.output_tokens == 50 and snap["other"].n == 1


def test_timeline_buckets_with_gauges():
    m = Monitor(max_samples=100, window_s=1000)
    m.add(sample(ts=1000.5, e2e=100.0))
    m.add(sample(ts=1001.0, e2e=300.0))
    m.add(sample(ts=1007.0, e2e=50.0, status="error"))
    m.record_gauges({"m": 3}, {"m": 2}, ts=1001.5)
    rows = m.timeline(bucket_s=5.0, now=1010.0)
    assert [(r["t"], r["n"], r["errors"]) for r in rows] == [(1000.0, 2, 0), (1005.0, 1, 1)]
    assert rows[0]["e2e_p50"] == 200.0 and rows[0]["queued"] == 3 and rows[0]["in_flight"] == 2


def test_plots_and_table(tmp_path):
    samples = [sample(ts=1000.0 + i, e2e=100.0 + i) for i in range(20)] + [sample(model="b", ts=1005.0)]
    for path in (plot_latency_over_time(samples, tmp_path / "t.png"), plot_histogram(samples, tmp_path / "h.png")):
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
    m = Monitor()
    for s in samples:
        m.add(s)
    from rich.console import Console

    stats = {
        "models": {k: v.to_dict() for k, v in m.snapshot(now=1030.0).items()},
        "gauges": {"m": {"queued": 1, "in_flight": 2}},
        "window_s": 300,
        "max_samples": 2000,
    }
    console = Console(width=200, record=True)
    console.print(stats_table(stats))
    text = console.export_text()
    assert "10.0 / 10.0 / 10.0" in text and "110 / 118 / 119" in text  # TTFT and E2E p50/p95/p99
    assert [line.split()[0] for line in text.splitlines()[2:4]] == ["b", "m"]
