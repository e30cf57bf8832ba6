"""SOAP for every model of a stacked batch at once: the step `soap_cuda.optim.SOAP` takes as
`train()` runs it (make_optimizer's settings: the optimizer's defaults, no refinement), with
every model's slope, curvature and step length computed side by side.

Per model m, as SOAP.step: d = -grad (the FA pseudo-gradient), t = h / ||d||, the batch's mean
loss (per-example float64 sums) at theta, theta + t d and theta - t d, then
    g_d = (L+ - L-) / (2 t),  c_d = (L+ - 2 L0 + L-) / t^2,
alpha = -lr g_d / c_d where c_d > min_curvature, else the fallback step downhill, clipped to
|alpha| ||d|| <= max_step; a zero or non-finite ||d|| takes no step. The three losses of all
models come from three stacked forward passes (no autograd), the step lengths from (M,) float64
tensors: no host synchronisation and no Python loop over models.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ..optim import SOAP


def _soap_default(name: str) -> float:
    return float(inspect.signature(SOAP.__init__).parameters[name].default)


H, MAX_STEP, FALLBACK_LR, MIN_CURVATURE = (
    _soap_default(k) for k in ("h", "max_step", "fallback_lr", "min_curvature"))


def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(M,) values as `like`'s dtype, shaped to broadcast over its trailing dims."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class StackedSOAP:
    """`params`: per layer the stacked weight (M, out, in) and bias (M, out), in the models'
    parameter order (the order of SOAP's norm sum); `logits(x, weights)` runs the stacked
    models at the given [(weight, bias)] per layer; `lrs`: each model's learning rate."""

    def __init__(self, params: list[torch.Tensor], logits, lrs: list[float]):
        self.params = params
        self.logits = logits
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=params[0].device)

    def _mean_losses(self, x: torch.Tensor, y: torch.Tensor, params) -> torch.Tensor:
        """Each model's mean loss over its rows at `params`: (M,) float64, from per-example
        losses in float64 as SOAP sums them."""
        out = self.logits(x, list(zip(params[0::2], params[1::2])))
        m, n, c = out.shape
        return F.cross_entropy(out.reshape(m * n, c), y.reshape(m * n),
                               reduction="none").double().view(m, n).mean(1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, lr_factor: float = 1.0) -> None:
        """After backward() filled every parameter's .grad: one SOAP step for every model on
        its own batch (x (M, N, in), y (M, N)), at learning rate lr * lr_factor."""
        directions = [-p.grad for p in self.params]
        d_norm = torch.zeros_like(self.lr)
        for d in directions:  # summed per parameter, in order, as SOAP's host loop does
            d_norm = d_norm + d.double().square().flatten(1).sum(1)
        d_norm = d_norm.sqrt()
        moves = (d_norm != 0) & torch.isfinite(d_norm)
        t = torch.where(moves, H / d_norm, torch.zeros_like(d_norm))
        l0 = self._mean_losses(x, y, self.params)
        lp = self._mean_losses(x, y, [p + _per_model(t, p) * d
                                      for p, d in zip(self.params, directions)])
        lm = self._mean_losses(x, y, [p - _per_model(t, p) * d
                                      for p, d in zip(self.params, directions)])
        g_d = (lp - lm) / (2 * t)
        c_d = (lp - 2 * l0 + lm) / (t * t)
        fallback = torch.where(g_d > 0, -FALLBACK_LR, FALLBACK_LR).to(g_d.dtype)
        alpha = torch.where(c_d > MIN_CURVATURE, -(self.lr * lr_factor) * g_d / c_d, fallback)
        clipped = alpha.abs() * d_norm > MAX_STEP
        alpha = torch.where(clipped, torch.copysign(MAX_STEP / d_norm, alpha), alpha)
        alpha = torch.where(moves, alpha, torch.zeros_like(alpha))  # NaNs of t = 0 dropped here
        for p, d in zip(self.params, directions):
            p.add_(_per_model(alpha, p) * d)
