"""Sweep bookkeeping on synthetic curves: time-to-target, best lr, bootstrap intervals."""
import math
import warnings

import numpy as np
import pytest

from soap_cuda.experiments.controls import measured_gains
from soap_cuda.experiments.stats import (best_lr, bootstrap_ci, extend_grid, mean_ci, ratio_ci,
                                         time_to_target, value_at, verdict)


def exp_curve(rate, n=50, start=2.3, floor=0.0):
    x = np.linspace(0, 10_000, n)
    return x, floor + (start - floor) * np.exp(-rate * x / 1000)


def test_time_to_target_interpolates_exactly_on_a_line():
    assert time_to_target([0, 100, 200], [2.0, 1.0, 0.0], 0.5) == pytest.approx(150.0)
    assert time_to_target([0, 100], [0.4, 0.1], 0.5) == 0.0
    assert math.isinf(time_to_target([0, 100], [2.0, 1.0], 0.5))


def test_time_to_target_stops_at_divergence_and_takes_first_crossing():
    assert math.isinf(time_to_target([0, 10, 20], [2.0, math.inf, 0.1], 0.5))
    assert time_to_target([0, 10, 20, 30], [2.0, 0.0, 3.0, 0.0], 1.0) == pytest.approx(5.0)


def test_time_to_target_twice_as_slow_curve_needs_twice_the_examples():
    x, fast = exp_curve(1.0, n=2001)
    _, slow = exp_curve(0.5, n=2001)
    target = 0.5
    ratio = time_to_target(x, slow, target) / time_to_target(x, fast, target)
    assert ratio == pytest.approx(2.0, rel=1e-3)


def test_value_at():
    assert value_at([0, 10], [1.0, 3.0], 5) == 2.0
    assert value_at([0, 10], [1.0, 3.0], 50) == 3.0


def test_best_lr_inside_and_at_edges():
    b = best_lr({0.01: 1.0, 0.1: 0.3, 1.0: 0.5})
    assert b.lr == 0.1 and b.at_edge is None
    assert best_lr({0.01: 1.0, 0.1: 0.9, 1.0: 0.5}).at_edge == "high"
    assert best_lr({0.01: 0.1, 0.1: 0.9}).at_edge == "low"


def test_best_lr_diverged_rates_do_not_count_and_all_diverged_points_low():
    b = best_lr({0.01: 1.0, 0.1: 0.5, 1.0: math.inf})
    assert b.lr == 0.1 and b.at_edge is None  # the optimum is bracketed by a divergence
    assert best_lr({0.1: math.inf, 1.0: math.inf}).at_edge == "low"


def test_extend_grid_uses_the_grid_log_step():
    assert extend_grid([0.01, 0.03, 0.1], "high") == pytest.approx(0.333, rel=1e-2)
    assert extend_grid([0.01, 0.1, 1.0], "low") == pytest.approx(0.001)


def test_bootstrap_interval_covers_true_mean_at_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        sample = rng.normal(1.0, 1.0, 30)
        lo, hi = bootstrap_ci(sample, lambda d: d.mean(axis=1), n_boot=2000, seed=t)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_ratio_ci_paired_detects_a_consistent_2x_slowdown():
    rng = np.random.default_rng(1)
    ref = rng.uniform(900, 1100, 5)
    slow = ref * 2 * rng.uniform(0.95, 1.05, 5)
    r = ratio_ci(slow, ref, censor_at=10_000)
    assert r.bound == "exact" and r.lo > 1.5 and r.hi < 2.5 and r.lo <= r.estimate <= r.hi
    assert verdict(r) == "slower"
    assert verdict(ratio_ci(ref, slow, censor_at=10_000)) == "faster"


def test_ratio_ci_overlapping_samples_are_not_resolved():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(500, 1500, 5), rng.uniform(500, 1500, 5)
    r = ratio_ci(a, b, censor_at=10_000)
    assert r.lo < 1 < r.hi and verdict(r) == "not resolved"


def test_ratio_ci_censoring_makes_bounds():
    r = ratio_ci([math.inf, 5000, 6000], [1000, 1100, 900], censor_at=8000)
    assert r.bound == "lower" and verdict(r) == "slower"
    r = ratio_ci([1000, 1100, 900], [math.inf, 5000, 6000], censor_at=8000)
    assert r.bound == "upper" and verdict(r) == "faster"
    r = ratio_ci([math.inf, 1000], [math.inf, 1000], censor_at=8000)
    assert r.bound == "unknown" and verdict(r) == "not resolved"
    # A lower bound below 1 supports nothing.
    assert verdict(ratio_ci([math.inf, 100], [1000, 1000], censor_at=1200)) == "not resolved"


def test_mean_ci_with_unreached_target():
    assert mean_ci([1.0, math.inf]).bound == "lower"
    m = mean_ci([1.0, 2.0, 3.0])
    assert m.estimate == 2.0 and 1.0 <= m.lo <= m.hi <= 3.0


def test_measured_gains_geometric_mean_skips_initial_eval():
    recs = [{"kind": "eval", "examples": 0, "layers": {"fc1": {"err_norm_ratio": 1000.0}}},
            {"kind": "eval", "examples": 10, "layers": {"fc1": {"err_norm_ratio": 4.0},
                                                         "fc2": {"err_norm_ratio": 1.0}}},
            {"kind": "eval", "examples": 20, "layers": {"fc1": {"err_norm_ratio": 16.0},
                                                         "fc2": {"err_norm_ratio": 1.0}}}]
    g = measured_gains([recs])
    assert g == {"fc1": pytest.approx(8.0), "fc2": pytest.approx(1.0)}


@pytest.mark.parametrize("paired", [True, False])
def test_ratio_ci_with_resamples_of_zero_time_has_an_infinite_not_nan_bound(paired):
    """A reference that reaches the target at once (time 0) in some seeds: resamples of only
    those give an infinite ratio, so the upper bound is inf, never NaN, and numpy has nothing to
    warn about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        interval = ratio_ci([100.0, 200.0, 300.0], [0.0, 0.0, 50.0], censor_at=1e4,
                            paired=paired)
    assert interval.hi == math.inf and math.isfinite(interval.lo) and interval.lo > 0
