"""Statistics for sweeps: time-to-target, best learning rate, bootstrap confidence intervals.

Everything here works on plain numbers (curves as (examples, loss) arrays), so it is tested on
synthetic curves, independent of training.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def time_to_target(examples, losses, target: float) -> float:
    """Examples seen when the loss curve first reaches `target` (linear interpolation between
    evaluations); 0 if it starts there, inf if it never gets there (or diverges first)."""
    x = np.asarray(examples, dtype=float)
    y = np.asarray(losses, dtype=float)
    if len(x) == 0:
        return math.inf
    if y[0] <= target:
        return float(x[0])
    for i in range(1, len(x)):
        if not math.isfinite(y[i]):
            return math.inf
        if y[i] <= target:
            y0, y1 = y[i - 1], y[i]
            frac = (y0 - target) / (y0 - y1) if y0 != y1 else 1.0
            return float(x[i - 1] + frac * (x[i] - x[i - 1]))
    return math.inf


def value_at(examples, values, at: float) -> float:
    """A curve's value at `at` examples, interpolating linearly between evaluations."""
    x = np.asarray(examples, dtype=float)
    y = np.asarray(values, dtype=float)
    if at <= x[0]:
        return float(y[0])
    if at >= x[-1]:
        return float(y[-1])
    return float(np.interp(at, x, y))


@dataclass
class BestLR:
    lr: float
    score: float
    at_edge: str | None  # "low" / "high" when the best is the grid's smallest / largest lr
    scores: dict  # lr -> score (mean over seeds; inf when any seed diverged)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = {repr(float(k)): v for k, v in self.scores.items()}
        return d


def best_lr(scores: dict[float, float]) -> BestLR:
    """The learning rate with the lowest score (lower is better), and whether it sits at an edge
    of the grid, in which case the true optimum may lie outside it."""
    if not scores:
        raise ValueError("no learning rates to choose from")
    lrs = sorted(scores)
    finite = [lr for lr in lrs if math.isfinite(scores[lr])]
    if not finite:  # every rate diverged: the optimum is below the grid
        return BestLR(lrs[0], math.inf, "low", dict(scores))
    lr = min(finite, key=lambda k: (scores[k], k))
    edge = None
    if len(lrs) == 1:
        edge = "both"
    elif lr == lrs[0]:
        edge = "low"
    elif lr == lrs[-1]:
        edge = "high"
    return BestLR(lr, scores[lr], edge, dict(scores))


def extend_grid(lrs: list[float], edge: str) -> float:
    """The next learning rate beyond `edge`, one geometric grid step further out."""
    lrs = sorted(lrs)
    if len(lrs) == 1:
        step = math.sqrt(10.0)
    elif edge == "low":
        step = lrs[1] / lrs[0]
    else:
        step = lrs[-1] / lrs[-2]
    new = lrs[0] / step if edge == "low" else lrs[-1] * step
    return float(f"{new:.3g}")


def bootstrap_ci(data, statistic, n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the rows of `data`.

    `data` is (n,) or (n, k): rows are resampled together, so paired samples (the same seed
    under two rules) stay paired. `statistic` maps a batch of resamples, shape (n_boot, n) or
    (n_boot, n, k), to n_boot values (e.g. `lambda d: d.mean(axis=1)`).
    """
    data = np.asarray(data, dtype=float)
    n = len(data)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.asarray(statistic(data[idx]), dtype=float)
    return _percentiles(stats, level)


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap values. Where some are infinite (a ratio
    whose resampled denominator is 0), order statistics: interpolating between two infinite
    values would give inf - inf, a NaN bound."""
    alpha = (1.0 - level) / 2.0
    method = "inverted_cdf" if np.isinf(stats).any() else "linear"
    return (float(np.quantile(stats, alpha, method=method)),
            float(np.quantile(stats, 1.0 - alpha, method=method)))


@dataclass
class Interval:
    estimate: float
    lo: float
    hi: float
    n: int
    bound: str = "exact"  # "lower"/"upper": censored data make the estimate a bound

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    v = np.asarray(values, dtype=float)
    if np.isinf(v).any():
        return Interval(math.inf, math.inf, math.inf, len(v), "lower")
    lo, hi = bootstrap_ci(v, lambda d: d.mean(axis=1), n_boot, level, seed)
    return Interval(float(v.mean()), lo, hi, len(v))


def ratio_ci(num, den, censor_at: float, paired: bool = True, n_boot: int = 10_000,
             level: float = 0.95, seed: int = 0) -> Interval:
    """mean(num) / mean(den) with a bootstrap interval (over seeds; paired when the i-th entries
    share a seed).

    Censored times (inf: target never reached) are replaced by `censor_at`, the run's budget,
    which makes the ratio a lower bound when `num` has censored entries, an upper bound when
    `den` does, and uninformative ("unknown") when both do.
    """
    a = np.asarray(num, dtype=float)
    b = np.asarray(den, dtype=float)
    ca, cb = bool(np.isinf(a).any()), bool(np.isinf(b).any())
    bound = {(False, False): "exact", (True, False): "lower", (False, True): "upper",
             (True, True): "unknown"}[(ca, cb)]
    a = np.where(np.isinf(a), censor_at, a)
    b = np.where(np.isinf(b), censor_at, b)

    def ratio(m_a, m_b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(m_b > 0, m_a / np.where(m_b > 0, m_b, 1.0), np.inf)

    est = float(ratio(a.mean(), b.mean()))
    if paired:
        if len(a) != len(b):
            raise ValueError("paired samples need equal lengths")
        lo, hi = bootstrap_ci(np.stack([a, b], 1),
                              lambda d: ratio(d[..., 0].mean(axis=1), d[..., 1].mean(axis=1)),
                              n_boot, level, seed)
    else:
        rng = np.random.default_rng(seed)
        ia = rng.integers(0, len(a), size=(n_boot, len(a)))
        ib = rng.integers(0, len(b), size=(n_boot, len(b)))
        lo, hi = _percentiles(ratio(a[ia].mean(axis=1), b[ib].mean(axis=1)), level)
    return Interval(float(est), float(lo), float(hi), len(a), bound)


def verdict(ratio: Interval) -> str:
    """What a time ratio (rule / reference) supports: 'faster' or 'slower' only when the whole
    interval lies on one side of 1, respecting censoring; otherwise 'not resolved'."""
    if ratio.bound in ("exact", "upper") and ratio.hi < 1.0:
        return "faster"
    if ratio.bound in ("exact", "lower") and ratio.lo > 1.0:
        return "slower"
    return "not resolved"


def geometric_mean(values) -> float:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x) and x > 0], float)
    return float(np.exp(np.log(v).mean())) if len(v) else math.nan
