import pytest

from lmgauge.bench.metrics import (
    bootstrap_delta_ci,
    compare_samples,
    fit_cost_curve,
    goodput,
    percentile,
    pooled_itl,
    saturation_index,
    summarize,
    tpot_ms,
)


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


# --- cost curves, saturation, comparison ---------------------------------------------------------


def test_cost_curve_recovers_known_coefficients():
    n = [256, 512, 1024, 2048, 4096] * 3
    t = [5 + 0.2 * x + 1e-5 * x * x for x in n]
    fit = fit_cost_curve(n, t)
    assert (fit.a, fit.b, fit.c) == (pytest.approx(5), pytest.approx(0.2), pytest.approx(1e-5))
    assert fit.r2 == pytest.approx(1.0) and fit.n == 15
    assert fit.predict(1000) == pytest.approx(5 + 200 + 10)
    assert fit.quadratic_share_at(4096) == pytest.approx(1e-5 * 4096**2 / (5 + 0.2 * 4096 + 1e-5 * 4096**2))
    assert 1.0 < fit.exponent < 2.0  # between linear and quadratic


def test_cost_curve_exponent_of_pure_power_laws():
    n = [100, 200, 400, 800]
    assert fit_cost_curve(n, [3 * x for x in n]).exponent == pytest.approx(1.0)
    assert fit_cost_curve(n, [x * x for x in n]).exponent == pytest.approx(2.0)
    with pytest.raises(ValueError, match="3 or more"):
        fit_cost_curve([100, 100, 200], [1, 1, 2])


def test_saturation_is_the_last_level_before_throughput_flattens_while_latency_climbs():
    # throughput doubles, then +5% while latency +80%: saturated at level index 1
    assert saturation_index([1.0, 2.0, 2.1, 2.1], [100, 105, 190, 380]) == 1
    assert saturation_index([1.0, 1.9, 3.6, 6.5], [100, 105, 110, 120]) is None  # still scaling
    assert saturation_index([1.0, 1.02, 1.03], [100, 100, 101]) is None  # flat throughput, flat latency
    assert saturation_index([2.0, 1.5], [100, 300]) == 0  # throughput falls as latency climbs
    assert saturation_index([], []) is None and saturation_index([None, 1.0], [None, 5]) is None


def test_comparison_on_known_sets():
    a = [10.0, 11.0, 12.0, 13.0, 14.0]
    b = [20.0, 21.0, 22.0, 23.0, 24.0]
    c = compare_samples(a, b)
    assert (c.median_a, c.median_b, c.delta) == (12.0, 22.0, pytest.approx(10 / 12))
    assert c.p_value == pytest.approx(2 / 252)  # exact two-sided Mann-Whitney U, complete separation 5 vs 5
    assert c.significant and c.ci_low <= c.delta <= c.ci_high
    same = compare_samples(a, list(reversed(a)))
    assert same.delta == 0 and same.p_value == pytest.approx(1.0) and not same.significant
    assert not compare_samples([1.0], [2.0]).significant  # one sample each: no test possible
    empty = compare_samples([], [1.0])
    assert empty.n_a == 0 and empty.delta is None


def test_bootstrap_ci_is_seeded_and_brackets_the_shift():
    a = [float(x) for x in range(100, 120)]
    b = [x * 1.5 for x in a]
    lo, hi = bootstrap_delta_ci(a, b, seed=1)
    assert (lo, hi) == bootstrap_delta_ci(a, b, seed=1)
    assert lo <= 0.5 <= hi and lo > 0.3 and hi < 0.7
