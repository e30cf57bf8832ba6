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

With `refine=K`, d is refined by K perturbations around it before the step: candidates
d_k = d + refine_scale ||d|| u_k/||u_k|| (u_k Gaussian, reproducible from `seed` and the step
count), each rescaled to ||d||, and d itself; the slope along every candidate is measured in the
same batched pass (2K + 3 weight sets), and the steepest descending one becomes d. Its
curvature then comes from the same losses, so refining costs no extra pass.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..perturb.forward import losses_at_weight_sets, per_example_losses
from ..perturb.layers import linear_layers
from .soap_step import step_length


class SOAP(Optimizer):
    """Second-order step along the pseudo-gradient direction (see the module docstring).

    model, loss_fn: for the batched evaluation, loss_fn(output, target) giving per-example losses
    (reduction='none'); the objective is their mean. Without them (or without inputs/targets at
    step time, or with parameters outside the model's linear layers) the three losses come from
    calling the closure at the shifted parameters, at the closure's precision.
    `history` holds one record per step: loss, g_d, c_d, alpha, step_norm, kind ("newton",
    "fallback" or "zero-direction"), clipped, predicted_change, actual_change (None unless
    measure_actual), and with refine > 0: g_d_unrefined (the slope along the pseudo-gradient
    direction) and refine_choice (0: d kept, k: candidate k).
    """

    def __init__(self, params, model: nn.Module | None = None, loss_fn=None, h: float = 1e-3,
                 lr: float = 1.0, max_step: float = 1.0, fallback_lr: float = 1e-2,
                 min_curvature: float = 0.0, measure_actual: bool = True, refine: int = 0,
                 refine_scale: float = 0.5, seed: int = 0):
        if h <= 0 or max_step <= 0 or lr <= 0 or fallback_lr < 0:
            raise ValueError("h, lr and max_step must be > 0 and fallback_lr >= 0")
        if refine < 0 or refine_scale <= 0:
            raise ValueError("refine must be >= 0 and refine_scale > 0")
        # step_count lives in the param group so a saved optimizer resumes the same draws
        super().__init__(params, dict(h=h, lr=lr, max_step=max_step, fallback_lr=fallback_lr,
                                      min_curvature=min_curvature, refine=refine,
                                      refine_scale=refine_scale, seed=seed, step_count=0))
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

    @staticmethod
    def _shifted(p: Tensor, directions, t: float) -> Tensor:
        """[p, p + t d_0, p - t d_0, p + t d_1, ...] stacked (zero shift where d lacks p)."""
        sets = [p]
        for direction in directions:
            dp = direction.get(id(p))
            sets += [p, p] if dp is None else [p + t * dp, p - t * dp]
        return torch.stack(sets)

    @torch.no_grad()
    def _batched_losses(self, layers, directions, t, inputs, targets):
        """L0 and [(L+, L-) per direction], from one batched pass of 2 len(directions) + 1 sets."""
        sets = {name: (self._shifted(m.weight, directions, t),
                       None if m.bias is None else self._shifted(m.bias, directions, t))
                for name, m in layers.items()}
        losses = losses_at_weight_sets(self.model, inputs, targets, self.loss_fn, sets)
        values = losses.mean(1).tolist()
        return values[0], [(values[1 + 2 * k], values[2 + 2 * k]) for k in range(len(directions))]

    def _candidates(self, group, params, direction, d_norm):
        """d and K perturbed directions around it, each of norm ||d|| (see the module doc)."""
        gen = torch.Generator().manual_seed(
            (group["seed"] * 1_000_003 + group["step_count"]) % (2**63 - 1))
        candidates = [direction]
        for _ in range(group["refine"]):
            noise = {id(p): torch.randn(p.shape, generator=gen, dtype=torch.float64)
                     for p in params}
            u_norm = math.sqrt(sum(float(u.square().sum()) for u in noise.values())) or 1.0
            mixed = {id(p): direction[id(p)].double()
                     + (group["refine_scale"] * d_norm / u_norm) * noise[id(p)].to(p.device)
                     for p in params}
            m_norm = math.sqrt(sum(float(m.square().sum()) for m in mixed.values())) or 1.0
            candidates.append({id(p): (mixed[id(p)] * (d_norm / m_norm)).to(p.dtype)
                               for p in params})
        return candidates

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
        candidates = self._candidates(group, params, direction, d_norm)
        group["step_count"] += 1
        if layers is not None:
            l0, pairs = self._batched_losses(layers, candidates, t, inputs, targets)
        else:
            l0 = loss_value
            pairs = [(self._closure_loss(closure, params, c, t),
                      self._closure_loss(closure, params, c, -t)) for c in candidates]
        slopes = [(lp_k - lm_k) / (2 * t) for lp_k, lm_k in pairs]
        choice = min(range(len(slopes)), key=slopes.__getitem__)  # steepest descent; ties keep d
        direction, (lp, lm) = candidates[choice], pairs[choice]
        if group["refine"]:
            record.update(g_d_unrefined=slopes[0], refine_choice=choice)
        f64 = functools.partial(torch.tensor, dtype=torch.float64)
        alpha, g_d, c_d, newton, clipped = (v.item() for v in step_length(
            f64(l0), f64(lp), f64(lm), f64(t), f64(d_norm), f64(group["lr"]),
            group["fallback_lr"], group["min_curvature"], group["max_step"]))
        kind = "newton" if newton else "fallback"
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
