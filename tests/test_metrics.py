import pytest

from lmgauge.bench.metrics import goodput, percentile, pooled_itl, summarize, tpot_ms


def test_percentiles_on_a_known_set():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    s = summarize(values)
    assert (s.n, s.min, s.max, s.mean) == (100, 1, 100, 50.5)
    assert s.sd == pytest.approx(29.011491975882016)


def test_undefined_samples_are_dropped_not_zeroed():
    s = summarize([None, 10.0, float("nan"), 30.0])
    assert s.n == 2 and s.p50 == 20.0
    empty = summarize([None])
    assert empty.n == 0 and empty.p50 is None and empty.sd is None
    assert summarize([5.0]).sd is None


def test_tpot_and_itl_pooling():
    assert tpot_ms(200, 1200, 11) == pytest.approx(100)
    assert tpot_ms(200, 1200, 1) is None
    assert pooled_itl([[1, 2], [], [3]]) == [1, 2, 3]


def test_goodput_counts_only_successful_requests_within_every_slo():
    samples = [
        {"status": "ok", "ttft_ms": 100, "tpot_ms": 20},
        {"status": "ok", "ttft_ms": 600, "tpot_ms": 20},  # misses TTFT
        {"status": "ok", "ttft_ms": 100, "tpot_ms": 80},  # misses TPOT
        {"status": "error", "ttft_ms": 10, "tpot_ms": 1},
        {"status": "ok", "ttft_ms": 400, "tpot_ms": None},  # one token: TPOT undefined
    ]
    assert goodput(samples, 2.0, {"ttft_ms": 500, "tpot_ms": 50}) == pytest.approx(1.0)
