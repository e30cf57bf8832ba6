"""SOAP's step length from its three losses, one source for `optim.SOAP` (one model, 0-d
tensors) and `stacked.SOAP` (M models side by side, (M,) tensors), in float64:
    g_d = (L+ - L-) / (2 t),  c_d = (L+ - 2 L0 + L-) / t^2,
alpha = -lr g_d / c_d where c_d > min_curvature (a Newton step), else the fallback step
downhill (fallback_lr, sign-flipped when g_d > 0); |alpha| ||d|| <= max_step."""
from __future__ import annotations

import torch


def step_length(l0, lp, lm, t, d_norm, lr, fallback_lr: float, min_curvature: float,
                max_step: float):
    """(alpha, g_d, c_d, newton, clipped), each shaped as the losses."""
    g_d = (lp - lm) / (2 * t)
    c_d = (lp - 2 * l0 + lm) / (t * t)
    newton = c_d > min_curvature
    fallback = torch.full_like(g_d, fallback_lr)
    fallback = torch.where(g_d > 0, -fallback, fallback)
    alpha = torch.where(newton, -lr * g_d / c_d, fallback)
    clipped = alpha.abs() * d_norm > max_step
    alpha = torch.where(clipped, torch.copysign(max_step / d_norm, alpha), alpha)
    return alpha, g_d, c_d, newton, clipped
