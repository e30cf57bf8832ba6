"""SOAP for every model of a stacked network at once: the step `soap_cuda.optim.SOAP` takes
(no refinement), with every model's slope, curvature and step length side by side.

Per model m, as SOAP.step: d = -grad (the FA pseudo-gradient), t = h / ||d||, the batch's mean
loss at theta, theta + t d and theta - t d, then the step length of optim/soap_step.py (one
source for both); a zero or non-finite ||d|| takes no step. The three losses of all models come
from three stacked forward passes (no autograd), the step lengths from (M,) float64 tensors: no
host synchronisation and no Python loop over models.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ..optim import SOAP as _SOAP
from ..optim.soap_step import step_length
from .layers import StackedLinear


def _soap_default(name: str) -> float:
    return float(inspect.signature(_SOAP.__init__).parameters[name].default)


class SOAP:
    """SOAP's step for every model of a StackedNet, `lr` a float or one per model. The three
    losses of a step are measured as SOAP measures them: for a network of linear layers only,
    as its batched pass does (the stack at explicit weights, per-example float64 sums, L0 among
    them); otherwise as its closure path does: the parameters shifted in place, the net's
    training forward (batch norm statistics move, as the closure's passes move them), each
    model's mean loss at the model's precision, L0 the step's own loss. `loss_fn(output,
    target, reduction="none")` gives per-example losses. Every parameter views as (M, -1)."""

    def __init__(self, net, lr, loss_fn=F.cross_entropy, h: float = _soap_default("h"),
                 max_step: float = _soap_default("max_step"),
                 fallback_lr: float = _soap_default("fallback_lr"),
                 min_curvature: float = _soap_default("min_curvature")):
        self.net, self.loss_fn = net, loss_fn
        self.h, self.max_step = h, max_step
        self.fallback_lr, self.min_curvature = fallback_lr, min_curvature
        self.params = list(net.parameters())
        self.m = net.models
        self.lr = torch.as_tensor(lr, dtype=torch.float64, device=self.params[0].device)
        if self.lr.dim() == 0:
            self.lr = self.lr.expand(self.m).clone()
        # SOAP's batched pass takes linear layers only (optim.SOAP._layer_params)
        self.batched_pass = all(isinstance(module, StackedLinear)
                                for module in net.modules() if module._parameters
                                and any(p is not None for p in module._parameters.values()))
        self._names = [name for name, _ in net.named_parameters()]

    def state_dict(self) -> dict:
        return {}  # SOAP keeps nothing from step to step

    def load_state_dict(self, state: dict) -> None:
        pass

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(self.m, -1)

    def _column(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(-1, 1)

    def _losses(self, out: torch.Tensor, y: torch.Tensor, float64_sums: bool) -> torch.Tensor:
        """Each model's mean loss (M,) float64: of float64 per-example losses (SOAP's batched
        pass), or at the model's precision (its closure)."""
        m, n = out.shape[:2]
        losses = self.loss_fn(out.reshape(m * n, *out.shape[2:]),
                              y.reshape(m * n, *y.shape[2:]), reduction="none")
        if float64_sums:
            return losses.double().view(m, -1).mean(1)
        return losses.view(m, -1).mean(1).double()

    def _mean_losses_at(self, x, y, directions, t) -> torch.Tensor:
        """Linear layers only: each model's mean loss at theta + t d (theta: t None), from one
        stacked pass at explicit weights."""
        weights = {name: p if t is None else (self._flat(p) + self._column(t, p) * d).view_as(p)
                   for name, p, d in zip(self._names, self.params, directions)}
        out = torch.func.functional_call(self.net, weights, (x,), {"per_model": True})
        return self._losses(out, y, float64_sums=True)

    def _closure_losses_at(self, x, y, directions, t) -> torch.Tensor:
        """Each model's mean loss with its parameters shifted by t d in place (and shifted
        back), as SOAP's closure path measures it."""
        shifts = [self._column(t, p) * d for p, d in zip(self.params, directions)]
        for p, shift in zip(self.params, shifts):
            self._flat(p).add_(shift)
        try:
            out = self.net(x, per_model=True)
        finally:
            for p, shift in zip(self.params, shifts):
                self._flat(p).sub_(shift)
        return self._losses(out, y, float64_sums=False)

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             lr_factor: float = 1.0) -> None:
        """After backward() filled every parameter's .grad: one SOAP step for every model on
        its own batch (x (M, N, ...), y (M, N, ...); `losses` (M,) the step's mean losses), at
        learning rate lr * lr_factor."""
        directions = [-self._flat(p.grad) for p in self.params]
        d_norm = torch.zeros_like(self.lr)
        for d in directions:  # summed per parameter, in order, as SOAP's host loop does
            d_norm = d_norm + d.double().square().sum(1)
        d_norm = d_norm.sqrt()
        moves = (d_norm != 0) & torch.isfinite(d_norm)
        t = torch.where(moves, self.h / d_norm, torch.zeros_like(d_norm))
        if self.batched_pass:
            l0 = self._mean_losses_at(x, y, directions, None)
            lp = self._mean_losses_at(x, y, directions, t)
            lm = self._mean_losses_at(x, y, directions, -t)
        else:
            l0 = losses.double()
            lp = self._closure_losses_at(x, y, directions, t)
            lm = self._closure_losses_at(x, y, directions, -t)
        alpha = step_length(l0, lp, lm, t, d_norm, self.lr * lr_factor, self.fallback_lr,
                            self.min_curvature, self.max_step)[0]
        alpha = torch.where(moves, alpha, torch.zeros_like(alpha))  # NaNs of t = 0 dropped here
        for p, d in zip(self.params, directions):
            self._flat(p).add_(self._column(alpha, p) * d)
