"""SOAP for every model of a stacked batch at once: the step `soap_cuda.optim.SOAP` takes as
`train()` runs it (make_optimizer's settings: h = SOAP_H, the optimizer's other defaults, no
refinement), with every model's slope, curvature and step length computed side by side.

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
from .optimizers import SOAP_H


def _soap_default(name: str) -> float:
    return float(inspect.signature(SOAP.__init__).parameters[name].default)


MAX_STEP, FALLBACK_LR, MIN_CURVATURE = (
    _soap_default(k) for k in ("max_step", "fallback_lr", "min_curvature"))


class StackedSOAP:
    """SOAP's step for every model of a stacked net (StackedMLP or StackedConvNet), with `lrs`
    each model's learning rate. The three losses of a step are measured as `train()`'s SOAP
    measures them: for an MLP as SOAP's batched pass does (net.logits_at at explicit weights,
    per-example float64 sums, L0 among them); for a conv net as its closure path does (SOAP
    batches linear layers only): the parameters shifted in place, the net's training forward
    (batch norm statistics move, as the closure's passes move them), each model's mean loss at
    the model's precision, L0 the step's own loss. Every parameter views as (M, -1)."""

    def __init__(self, net, lrs: list[float]):
        self.net = net
        self.params = net.parameters()
        self.batched_pass = hasattr(net, "logits_at")
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=self.params[0].device)
        self.m = len(lrs)

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(self.m, -1)

    def _column(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(-1, 1)

    def _mean_losses_at(self, x, y, directions, t) -> torch.Tensor:
        """MLP: each model's mean loss at theta + t d (theta: t None), (M,) float64, from
        per-example float64 losses as SOAP's batched pass sums them."""
        weights = self.params if t is None else [
            (self._flat(p) + self._column(t, p) * d).view_as(p)
            for p, d in zip(self.params, directions)]
        out = self.net.logits_at(x, list(zip(weights[0::2], weights[1::2])))
        m, n, c = out.shape
        return F.cross_entropy(out.reshape(m * n, c), y.reshape(m * n),
                               reduction="none").double().view(m, n).mean(1)

    def _closure_losses_at(self, x, y, directions, t) -> torch.Tensor:
        """Conv net: each model's mean loss with its parameters shifted by t d in place (and
        shifted back), as SOAP's closure path measures it."""
        shifts = [self._column(t, p) * d for p, d in zip(self.params, directions)]
        for p, shift in zip(self.params, shifts):
            self._flat(p).add_(shift)
        try:
            out = self.net.forward(x)
        finally:
            for p, shift in zip(self.params, shifts):
                self._flat(p).sub_(shift)
        m, n, c = out.shape
        return F.cross_entropy(out.reshape(m * n, c), y.reshape(m * n),
                               reduction="none").view(m, n).mean(1).double()

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             lr_factor: float = 1.0) -> None:
        """After backward() filled every parameter's .grad: one SOAP step for every model on
        its own batch (x (M, N, ...), y (M, N); `losses` (M,) the step's mean losses), at
        learning rate lr * lr_factor."""
        directions = [-self._flat(p.grad) for p in self.params]
        d_norm = torch.zeros_like(self.lr)
        for d in directions:  # summed per parameter, in order, as SOAP's host loop does
            d_norm = d_norm + d.double().square().sum(1)
        d_norm = d_norm.sqrt()
        moves = (d_norm != 0) & torch.isfinite(d_norm)
        t = torch.where(moves, SOAP_H / d_norm, torch.zeros_like(d_norm))
        if self.batched_pass:
            l0 = self._mean_losses_at(x, y, directions, None)
            lp = self._mean_losses_at(x, y, directions, t)
            lm = self._mean_losses_at(x, y, directions, -t)
        else:
            l0 = losses.double()
            lp = self._closure_losses_at(x, y, directions, t)
            lm = self._closure_losses_at(x, y, directions, -t)
        g_d = (lp - lm) / (2 * t)
        c_d = (lp - 2 * l0 + lm) / (t * t)
        fallback = torch.where(g_d > 0, -FALLBACK_LR, FALLBACK_LR).to(g_d.dtype)
        alpha = torch.where(c_d > MIN_CURVATURE, -(self.lr * lr_factor) * g_d / c_d, fallback)
        clipped = alpha.abs() * d_norm > MAX_STEP
        alpha = torch.where(clipped, torch.copysign(MAX_STEP / d_norm, alpha), alpha)
        alpha = torch.where(moves, alpha, torch.zeros_like(alpha))  # NaNs of t = 0 dropped here
        for p, d in zip(self.params, directions):
            self._flat(p).add_(self._column(alpha, p) * d)
