"""Node- (and weight-) perturbation gradient estimates, written into `.grad` as backward() would.

With noise eps_k = sigma xi_k on a layer's pre-activations a, dL/da is estimated by
mean_k (L_k - L_0) / sigma^2 * eps_k (antithetic: (L_k+ - L_k-) / (2 sigma^2) * eps_k), per
example, and the weight gradient is that estimate times the layer's clean input, summed over the
batch. The kernels regenerate xi_k from Philox; nothing K-sized is stored.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .forward import PerturbedPass, perturbed_forward


def _write_grad(param: Tensor | None, grad: Tensor, accumulate: bool) -> None:
    if param is None or not param.requires_grad:
        return
    grad = grad.to(param.dtype).view(param.shape)
    if accumulate and param.grad is not None:
        param.grad.add_(grad)
    else:
        param.grad = grad.clone()


@torch.no_grad()
def node_perturbation_grad(model: nn.Module, x: Tensor, y: Tensor, loss_fn, num_perturb: int,
                           sigma: float, seed: int, offset: int = 0, layers=None,
                           antithetic: bool = False, mode: str = "node",
                           reduction: str = "mean", accumulate: bool = True) -> PerturbedPass:
    """Estimates d(objective)/d(weight, bias) of the chosen linear layers and writes `.grad`.

    objective = mean (reduction="mean") or sum of the per-example losses loss_fn(output, y).
    accumulate=True adds to an existing `.grad` (as backward() does); False overwrites it.
    mode="weight" perturbs the weights instead (estimate from the total loss per pass).
    Returns the PerturbedPass (its clean_losses give the loss at the current weights).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    result = perturbed_forward(model, x, y, loss_fn, num_perturb, sigma, seed, offset, layers,
                               antithetic, mode, capture_inputs=(mode == "node"))
    batch = x.shape[0]
    scale = 1.0 / batch if reduction == "mean" else 1.0
    losses = result.all_losses
    for _, name, layer in result.layers:
        stream = result.offsets[name]
        if mode == "node":
            inputs = result.inputs[name]
            rows_per_example = inputs.shape[0] // batch
            # a layer applied at several positions per example (e.g. [B, T, in]) sees each
            # example's loss at every one of its rows
            row_losses = losses.repeat_interleave(rows_per_example, dim=1)
            grad_w, grad_b = torch.ops.soap_cuda.node_perturb_grad(
                row_losses, inputs, layer.out_features, sigma, seed, stream, antithetic, scale)
        else:
            total = (losses.sum(1) * scale).unsqueeze(1).expand(-1, layer.out_features)
            width = layer.in_features + (layer.bias is not None)
            grad = torch.ops.soap_cuda.perturb_estimate(total.contiguous(), width, sigma, seed,
                                                        stream, antithetic, 1.0)
            grad_w, grad_b = grad[:, : layer.in_features], grad[:, -1]
        _write_grad(layer.weight, grad_w, accumulate)
        if layer.bias is not None:
            _write_grad(layer.bias, grad_b, accumulate)
    return result
