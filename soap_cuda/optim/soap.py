"""SOAP: a Newton step along the feedback-alignment direction, with slope and curvature measured
by extra forward passes.

Each step: the closure fills `.grad` with the (FA) pseudo-gradient; d = -grad. The loss is
measured at theta, theta + t d and theta - t d on the same batch (t = h / ||d||, so the probes move
h in parameter space); with `inputs`/`targets` given the three weight sets run as one batched
pass. From these
    g_d = (L+ - L-) / (2 t)          (d . grad L)
    c_d = (L+ - 2 L0 + L-) / t^2     (d^T H d)
and the step is alpha d with alpha = -lr g_d / c_d when c_d > min_curvature, else the fallback
alpha = fallback_lr, sign-flipped when g_d > 0 (d measured uphill); |alpha| ||d|| <= max_step.
Losses are per-example float64 sums: the curvature is a second difference, and float32 sums
would drown it in rounding.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..perturb.forward import losses_at_weight_sets, per_example_losses
from ..perturb.layers import linear_layers


class SOAP(Optimizer):
    """Second-order step along the pseudo-gradient direction (see the module docstring).

    model, loss_fn: for the batched evaluation, loss_fn(output, target) giving per-example losses
    (reduction='none'); the objective is their mean. Without them (or without inputs/targets at
    step time, or with parameters outside the model's linear layers) the three losses come from
    calling the closure at the shifted parameters, at the closure's precision.
    `history` holds one record per step: loss, g_d, c_d, alpha, step_norm, kind ("newton",
    "fallback" or "zero-direction"), clipped, predicted_change, actual_change (None unless
    measure_actual).
    """

    def __init__(self, params, model: nn.Module | None = None, loss_fn=None, h: float = 1e-3,
                 lr: float = 1.0, max_step: float = 1.0, fallback_lr: float = 1e-2,
                 min_curvature: float = 0.0, measure_actual: bool = True):
        if h <= 0 or max_step <= 0 or lr <= 0 or fallback_lr < 0:
            raise ValueError("h, lr and max_step must be > 0 and fallback_lr >= 0")
        super().__init__(params, dict(h=h, lr=lr, max_step=max_step, fallback_lr=fallback_lr,
                                      min_curvature=min_curvature))
        self.model, self.loss_fn, self.measure_actual = model, loss_fn, measure_actual
        self.history: list[dict] = []

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _layer_params(self):
        """name -> (layer, direction slots) when every parameter is a linear layer's weight or
        bias in self.model, else None."""
        if self.model is None or self.loss_fn is None:
            return None
        owned = {id(p) for p in self._params()}
        layers, covered = {}, set()
        for name, m in linear_layers(self.model):
            mine = [p for p in (m.weight, m.bias) if p is not None and id(p) in owned]
            if mine:
                layers[name] = m
                covered.update(id(p) for p in mine)
        return layers if covered == owned else None

    @torch.no_grad()
    def _batched_losses(self, layers, direction, t, inputs, targets):
        sets = {}
        for name, m in layers.items():
            w = m.weight
            dw = direction.get(id(w), torch.zeros_like(w))
            weights = torch.stack((w, w + t * dw, w - t * dw))
            biases = None
            if m.bias is not None:
                b = m.bias
                db = direction.get(id(b), torch.zeros_like(b))
                biases = torch.stack((b, b + t * db, b - t * db))
            sets[name] = (weights, biases)
        losses = losses_at_weight_sets(self.model, inputs, targets, self.loss_fn, sets)
        return losses.mean(1).tolist()

    def _closure_loss(self, closure, params, direction, shift) -> float:
        with torch.no_grad():
            for p in params:
                p.add_(direction[id(p)], alpha=shift)
        try:
            with torch.enable_grad():
                return float(torch.as_tensor(closure()).detach())
        finally:
            with torch.no_grad():
                for p in params:
                    p.sub_(direction[id(p)], alpha=shift)

    def step(self, closure, inputs: Tensor | None = None, targets: Tensor | None = None):
        """closure: zeroes the grads, computes the loss, calls backward() (filling the
        pseudo-gradient) and returns the loss. Returns the closure's loss."""
        group = self.param_groups[0]
        with torch.enable_grad():
            loss = closure()
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        params = [p for p in self._params() if p.grad is not None]
        direction = {id(p): -p.grad.detach().clone() for p in params}
        d_norm = math.sqrt(sum(float(d.double().square().sum()) for d in direction.values()))
        record = dict(loss=loss_value, d_norm=d_norm, g_d=0.0, c_d=0.0, alpha=0.0,
                      step_norm=0.0, kind="zero-direction", clipped=False,
                      predicted_change=0.0, actual_change=None)
        if d_norm == 0.0 or not math.isfinite(d_norm):
            self.history.append(record)
            return loss
        t = group["h"] / d_norm
        layers = self._layer_params() if inputs is not None and targets is not None else None
        if layers is not None:
            l0, lp, lm = self._batched_losses(layers, direction, t, inputs, targets)
        else:
            l0 = loss_value
            lp = self._closure_loss(closure, params, direction, t)
            lm = self._closure_loss(closure, params, direction, -t)
        g_d = (lp - lm) / (2 * t)
        c_d = (lp - 2 * l0 + lm) / (t * t)
        if c_d > group["min_curvature"]:
            alpha, kind = -group["lr"] * g_d / c_d, "newton"
        else:
            alpha, kind = (-group["fallback_lr"] if g_d > 0 else group["fallback_lr"]), "fallback"
        clipped = abs(alpha) * d_norm > group["max_step"]
        if clipped:
            alpha = math.copysign(group["max_step"] / d_norm, alpha)
        with torch.no_grad():
            for p in params:
                p.add_(direction[id(p)], alpha=alpha)
        record.update(loss=l0, g_d=g_d, c_d=c_d, alpha=alpha, step_norm=abs(alpha) * d_norm,
                      kind=kind, clipped=clipped,
                      predicted_change=g_d * alpha + 0.5 * c_d * alpha * alpha)
        if self.measure_actual:
            record["actual_change"] = self._loss_now(closure, inputs, targets, layers) - l0
        self.history.append(record)
        return loss

    def _loss_now(self, closure, inputs, targets, layers) -> float:
        if layers is not None:
            with torch.no_grad():
                out = self.model(inputs)
                return per_example_losses(self.loss_fn, out, targets, 1).mean().item()
        with torch.enable_grad():
            return float(torch.as_tensor(closure()).detach())
