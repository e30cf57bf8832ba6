"""Pure-PyTorch perturbation ops: the default kernels (Python fallback) and the test references.

Each `*_with_noise` function takes the noise explicitly (xi of shape [M, batch, width]); the op
references feed them the Philox noise the native kernels regenerate (reference/philox.py).
Argument checks raise RuntimeError with the native kernels' messages (csrc/perturb/).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .memory import overlaps
from .philox import philox_normal

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def _fail(op: str, arg: str, what: str) -> None:
    raise RuntimeError(f"soap_cuda::{op}: argument '{arg}' {what}")


def _float_or_double(op: str, arg: str, t: Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float64):
        _fail(op, arg, f"must be float32 or float64, got {t.dtype}")


def num_slots(num_perturb: int, antithetic: bool) -> int:
    """Noise draws behind num_perturb passes (antithetic: one draw per +/- pair)."""
    return num_perturb // 2 if antithetic else num_perturb


def signed_noise(xi: Tensor, num_perturb: int, antithetic: bool) -> Tensor:
    """[M, ...] draws -> [K, ...] per-pass noise: pass 2m is +xi_m, pass 2m+1 is -xi_m."""
    if not antithetic:
        return xi
    return torch.stack((xi, -xi), dim=1).reshape(num_perturb, *xi.shape[1:])


def check_philox_normal_fill_args(noise: Tensor, seed: int, offset: int) -> None:
    _float_or_double("philox_normal_fill", "noise", noise)


def philox_normal_fill(noise: Tensor, seed: int, offset: int) -> None:
    check_philox_normal_fill_args(noise, seed, offset)
    with torch.no_grad():
        noise.copy_(philox_normal(seed, offset, noise.shape, noise.dtype, noise.device))


def check_perturbed_bias_act_args(pre: Tensor, bias: Tensor | None, sigma: float,
                                  num_perturb: int, antithetic: bool, activation: str,
                                  op: str = "perturbed_bias_act") -> int:
    """Returns the per-pass batch size."""
    _float_or_double(op, "pre", pre)
    if pre.dim() != 2:
        _fail(op, "pre", f"must be 2-D, got shape {list(pre.shape)}")
    if num_perturb < 0:
        _fail(op, "num_perturb", f"must be >= 0, got {num_perturb}")
    if antithetic and num_perturb % 2:
        _fail(op, "num_perturb", f"must be even with antithetic pairs, got {num_perturb}")
    if pre.shape[0] % (num_perturb + 1):
        _fail(op, "pre", f"must have (num_perturb + 1) * batch rows, got {pre.shape[0]} rows "
                         f"for num_perturb={num_perturb}")
    if not (math.isfinite(sigma) and sigma >= 0):
        _fail(op, "sigma", f"must be finite and >= 0, got {sigma}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != pre.shape[1]:
            _fail(op, "bias", f"must have shape [{pre.shape[1]}] (width), got {list(bias.shape)}")
        if bias.dtype != pre.dtype:
            _fail(op, "bias", f"must have the dtype of 'pre' ({pre.dtype}), got {bias.dtype}")
        if bias.device != pre.device:
            _fail(op, "bias", f"must be on the device of 'pre' ({pre.device}), got {bias.device}")
    if activation not in ACTIVATIONS:
        _fail(op, "activation", f"must be one of identity, relu, tanh, sigmoid, got "
                                f"'{activation}'")
    return pre.shape[0] // (num_perturb + 1)


def perturbed_bias_act_with_noise(pre: Tensor, bias: Tensor | None, sigma: float, xi: Tensor,
                                  num_perturb: int, antithetic: bool, activation: str) -> Tensor:
    """act(pre + bias + sigma * s_k xi) with xi [M, batch, width] given; row block 0 clean."""
    batch = check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic, activation)
    z = pre + bias if bias is not None else pre.clone()
    if num_perturb:
        noise = signed_noise(xi.to(pre.dtype), num_perturb, antithetic)
        noisy = z[batch:] + (noise.reshape(-1, pre.shape[1]) * sigma)
        z = torch.cat((z[:batch], noisy))
    return ACTIVATIONS[activation](z)


def perturbed_bias_act(pre: Tensor, bias: Tensor | None, sigma: float, seed: int, offset: int,
                       num_perturb: int, antithetic: bool, activation: str) -> Tensor:
    batch = check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic, activation)
    xi = philox_normal(seed, offset, (num_slots(num_perturb, antithetic), batch, pre.shape[1]),
                       pre.dtype, pre.device)
    return perturbed_bias_act_with_noise(pre, bias, sigma, xi, num_perturb, antithetic,
                                         activation)


def check_written_in_place(op: str, pre: Tensor, bias: Tensor | None,
                           check_memory: bool = True) -> None:
    """check_memory=False for fake tensors, which have no addresses."""
    if not pre.is_contiguous():
        _fail(op, "pre", "must be contiguous (call .contiguous() first)")
    # A non-contiguous bias is copied before the kernel runs; a contiguous one is read in place.
    if check_memory and bias is not None and bias.is_contiguous() and overlaps(bias, pre):
        _fail(op, "bias", "must not share memory with 'pre', which is written in place")


def perturbed_bias_act_(pre: Tensor, bias: Tensor | None, sigma: float, seed: int, offset: int,
                        num_perturb: int, antithetic: bool, activation: str) -> None:
    """perturbed_bias_act written over `pre`."""
    check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic, activation,
                                  op="perturbed_bias_act_")
    check_written_in_place("perturbed_bias_act_", pre, bias)
    with torch.no_grad():
        pre.copy_(perturbed_bias_act(pre, bias, sigma, seed, offset, num_perturb, antithetic,
                                     activation))


def check_perturb_estimate_args(op: str, losses: Tensor, width: int, sigma: float,
                                antithetic: bool) -> int:
    """Returns num_perturb."""
    _float_or_double(op, "losses", losses)
    if losses.dim() != 2 or losses.shape[0] < 2:
        _fail(op, "losses", f"must be 2-D [num_perturb + 1, batch] with num_perturb >= 1, got "
                            f"shape {list(losses.shape)}")
    num_perturb = losses.shape[0] - 1
    if antithetic and num_perturb % 2:
        _fail(op, "losses", f"must have an even num_perturb with antithetic pairs, got "
                            f"{num_perturb}")
    if width < 0:
        _fail(op, "width", f"must be >= 0, got {width}")
    if not (math.isfinite(sigma) and sigma > 0):
        _fail(op, "sigma", f"must be finite and > 0, got {sigma}")
    return num_perturb


def slot_coefficients(losses: Tensor, antithetic: bool) -> Tensor:
    """[M, batch] finite differences: L_m - L_0, or (L_m+ - L_m-) / 2 per antithetic pair."""
    if antithetic:
        return (losses[1::2] - losses[2::2]) * 0.5
    return losses[1:] - losses[:1]


def perturb_estimate_with_noise(losses: Tensor, xi: Tensor, sigma: float, antithetic: bool,
                                scale: float) -> Tensor:
    """scale / (sigma M) * sum_m coef_m xi_m, accumulated in float64, for xi [M, batch, width]."""
    check_perturb_estimate_args("perturb_estimate", losses, xi.shape[-1], sigma, antithetic)
    coef = slot_coefficients(losses.double(), antithetic)
    acc = (coef.unsqueeze(-1) * xi.double()).sum(0)
    return (acc * (scale / (sigma * coef.shape[0]))).to(losses.dtype)


def perturb_estimate(losses: Tensor, width: int, sigma: float, seed: int, offset: int,
                     antithetic: bool, scale: float) -> Tensor:
    num_perturb = check_perturb_estimate_args("perturb_estimate", losses, width, sigma,
                                              antithetic)
    xi = philox_normal(seed, offset, (num_slots(num_perturb, antithetic), losses.shape[1], width),
                       torch.float64, losses.device)
    return perturb_estimate_with_noise(losses, xi, sigma, antithetic, scale)


def check_node_perturb_grad_args(losses: Tensor, input: Tensor, out_features: int, sigma: float,
                                 antithetic: bool) -> None:
    op = "node_perturb_grad"
    check_perturb_estimate_args(op, losses, out_features, sigma, antithetic)
    _float_or_double(op, "input", input)
    if input.dim() != 2:
        _fail(op, "input", f"must be 2-D, got shape {list(input.shape)}")
    if input.shape[0] != losses.shape[1]:
        _fail(op, "input", f"must have one row per example of 'losses' ({losses.shape[1]}), got "
                           f"shape {list(input.shape)}")
    if input.device != losses.device:
        _fail(op, "input", f"must be on the device of 'losses' ({losses.device}), got "
                           f"{input.device}")


def node_perturb_grad_with_noise(losses: Tensor, input: Tensor, xi: Tensor, sigma: float,
                                 antithetic: bool, scale: float) -> tuple[Tensor, Tensor]:
    """(G^T input, G summed over the batch) for the estimate G of dL/d(pre-activation)."""
    check_node_perturb_grad_args(losses, input, xi.shape[-1], sigma, antithetic)
    grad_pre = perturb_estimate_with_noise(losses.double(), xi, sigma, antithetic,
                                           scale).to(input.dtype)
    return grad_pre.t().mm(input), grad_pre.sum(0)


def node_perturb_grad(losses: Tensor, input: Tensor, out_features: int, sigma: float, seed: int,
                      offset: int, antithetic: bool, scale: float) -> tuple[Tensor, Tensor]:
    check_node_perturb_grad_args(losses, input, out_features, sigma, antithetic)
    grad_pre = perturb_estimate(losses.double(), out_features, sigma, seed, offset, antithetic,
                                scale).to(input.dtype)
    return grad_pre.t().mm(input), grad_pre.sum(0)
