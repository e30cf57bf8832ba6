"""The node-perturbation estimate on a small MLP: unbiased, cosine with the true gradient rising
with K, variance falling like 1/K, antithetic pairs lowering it. Fixed noise seeds (the figures
are deterministic); `python -m soap_cuda.perturb.stats` prints the full K = 1 .. 4096 table."""
import torch

from soap_cuda.perturb import stats


def problem():
    return stats.small_problem(seed=3, widths=(4, 6, 3), batch=8)


def test_mean_over_many_draws_matches_autograd():
    model, x, y = problem()
    # 16 draws of K=1024 antithetic passes, sigma small: bias + residual noise within 6%
    assert stats.mean_relative_error(model, x, y, draws=16, num_perturb=1024, sigma=1e-4) < 0.06


def test_weight_perturbation_mean_matches_autograd():
    model, x, y = problem()
    g = stats.true_gradient(model, x, y)
    mean = sum(stats.estimate(model, x, y, 2048, 1e-4, seed=s, antithetic=True, mode="weight")
               for s in range(8)) / 8
    assert ((mean - g).norm() / g.norm()).item() < 0.1


def test_cosine_rises_towards_one_and_variance_falls_like_one_over_k():
    model, x, y = problem()
    rows = stats.summary(model, x, y, [4, 32, 256, 2048], repeats=4, sigma=1e-4)
    cosines = [rows[k][0] for k in (4, 32, 256, 2048)]
    assert cosines == sorted(cosines) and cosines[-1] > 0.98 and cosines[0] < 0.8
    # relative MSE x K roughly constant: 8x more passes, 8x less error (within a factor 2)
    for small, big in ((4, 32), (32, 256), (256, 2048)):
        assert 4 < rows[small][1] / rows[big][1] < 16


def test_antithetic_pairs_lower_the_variance_when_the_noise_is_large():
    """With large noise the second-order term sigma/2 xi^T H xi adds variance; +/- pairs cancel
    it. (With small noise the two agree per noise draw, so at equal passes plain wins: see
    docs/PERTURB.md.)"""
    model, x, y = problem()
    rows = stats.summary(model, x, y, [16, 32], repeats=8, sigma=1.0)
    anti = stats.summary(model, x, y, [32], repeats=8, sigma=1.0, antithetic=True)[32][1]
    assert anti < 0.9 * rows[32][1]   # equal passes
    assert anti < 0.6 * rows[16][1]   # equal noise draws
