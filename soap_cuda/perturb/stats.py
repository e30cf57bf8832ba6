"""Statistics of the node-perturbation estimate against the autograd gradient.

`python -m soap_cuda.perturb.stats` prints, for a small MLP, the cosine with the true gradient
for K = 1 .. 4096, the 1/K fall of the variance, the effect of antithetic pairs, and the bias of
the mean over many draws. The tests run the same functions with smaller sizes.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from .gradient import node_perturbation_grad


def mse(out, target):
    return 0.5 * ((out - target) ** 2).sum(-1)


def small_problem(seed: int = 0, widths=(6, 10, 8, 3), batch: int = 16,
                  dtype=torch.float64):
    """An nn.Linear/tanh MLP (autograd gives its true gradient) and a regression batch."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=dtype) / a ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=dtype))
        layers += [lin, nn.Tanh()] if i < len(widths) - 2 else [lin]
    model = nn.Sequential(*layers)
    x = torch.randn(batch, widths[0], generator=g, dtype=dtype)
    y = torch.randn(batch, widths[-1], generator=g, dtype=dtype)
    return model, x, y


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def true_gradient(model, x, y, loss_fn=mse) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).mean().backward()
    g = flat_grad(model).clone()
    model.zero_grad(set_to_none=True)
    return g


def estimate(model, x, y, num_perturb, sigma, seed, antithetic=False, loss_fn=mse,
             mode="node") -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    node_perturbation_grad(model, x, y, loss_fn, num_perturb, sigma, seed,
                           antithetic=antithetic, mode=mode)
    g = flat_grad(model).clone()
    model.zero_grad(set_to_none=True)
    return g


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def summary(model, x, y, ks, repeats, sigma, antithetic=False, mode="node"):
    """K -> (mean cosine, mean squared error ||g_hat - g||^2 / ||g||^2) over `repeats` seeds."""
    g = true_gradient(model, x, y)
    rows = {}
    for k in ks:
        cos, err = [], []
        for r in range(repeats):
            e = estimate(model, x, y, k, sigma, seed=1000 * k + r, antithetic=antithetic,
                         mode=mode)
            cos.append(cosine(e, g))
            err.append(((e - g).square().sum() / g.square().sum()).item())
        rows[k] = (sum(cos) / repeats, sum(err) / repeats)
    return rows


def mean_relative_error(model, x, y, draws, num_perturb, sigma, antithetic=True) -> float:
    """||mean of `draws` estimates - g|| / ||g||: the bias, once the noise has averaged out."""
    g = true_gradient(model, x, y)
    mean = sum(estimate(model, x, y, num_perturb, sigma, seed=7 + d, antithetic=antithetic)
               for d in range(draws)) / draws
    return ((mean - g).norm() / g.norm()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=1e-4)
    args = parser.parse_args(argv)
    model, x, y = small_problem()
    n = sum(p.numel() for p in model.parameters())
    print(f"MLP 6-10-8-3 (tanh), batch 16, {n} parameters, float64, sigma={args.sigma}, "
          f"node perturbation of all layers, mean over {args.repeats} seeds\n")
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    plain = summary(model, x, y, ks, args.repeats, args.sigma)
    anti = summary(model, x, y, [k for k in ks if k % 2 == 0], args.repeats, args.sigma, True)
    print("| K | cosine | rel. MSE | K x rel. MSE | cosine (antithetic) | rel. MSE (antithetic) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        a = anti.get(k)
        print(f"| {k} | {plain[k][0]:.4f} | {plain[k][1]:.4g} | {k * plain[k][1]:.3g} | "
              + (f"{a[0]:.4f} | {a[1]:.4g} |" if a else "- | - |"))
    print(f"\nvariance ratio K=16 / K=256: {plain[16][1] / plain[256][1]:.2f} (1/K predicts 16)")
    print(f"antithetic / plain rel. MSE at K=64 passes: {anti[64][1] / plain[64][1]:.3f}; "
          f"at 32 noise draws (K=64 antithetic vs K=32): {anti[64][1] / plain[32][1]:.3f}")
    for big in (0.1, 0.5):
        p = summary(model, x, y, [32, 64], args.repeats, big)
        a = summary(model, x, y, [64], args.repeats, big, True)
        print(f"sigma={big}: antithetic / plain rel. MSE at K=64 passes: {a[64][1] / p[64][1]:.3f};"
              f" at 32 noise draws: {a[64][1] / p[32][1]:.3f}")
    print(f"bias: ||mean of 64 draws (K=4096, antithetic) - g|| / ||g|| = "
          f"{mean_relative_error(model, x, y, 64, 4096, args.sigma):.4f}")


if __name__ == "__main__":
    main()
