"""Model-level references for soap_cuda.perturb: K+1 separate forward passes in a Python loop,
the noise given explicitly. Slow and plain on purpose: the batched passes are held to these.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .perturb import node_perturb_grad_with_noise, perturb_estimate_with_noise, signed_noise


def _linear_by_name(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or hasattr(m, "b_matrix")}


def _pass_losses(model, x, y, loss_fn) -> Tensor:
    losses = loss_fn(model(x), y)
    return losses.double().reshape(x.shape[0], -1).sum(1)


@torch.no_grad()
def perturbed_losses_loop(model: nn.Module, x: Tensor, y: Tensor, loss_fn, sigma: float,
                          node_noise: dict, num_perturb: int, antithetic: bool = False,
                          capture: bool = False):
    """Per-example losses [K + 1, batch] (float64): pass 0 clean, pass k with
    sigma * s_k * xi[m(k)] added to the output of each linear layer named in node_noise
    (name -> xi [M, batch, out]). With capture, also the clean inputs of those layers."""
    layers = _linear_by_name(model)
    state = {"pass": 0}
    inputs = {}

    def hook(name):
        def add_noise(module, args, output):
            if capture and state["pass"] == 0:
                inputs[name] = args[0].reshape(-1, args[0].shape[-1])
            if state["pass"] == 0:
                return output
            noise = signed_noise(node_noise[name], num_perturb, antithetic)[state["pass"] - 1]
            return output + (noise.to(output.dtype) * sigma).view(output.shape)
        return add_noise

    handles = [layers[name].register_forward_hook(hook(name)) for name in node_noise]
    try:
        rows = []
        for k in range(num_perturb + 1):
            state["pass"] = k
            rows.append(_pass_losses(model, x, y, loss_fn))
    finally:
        for h in handles:
            h.remove()
    losses = torch.stack(rows)
    return (losses, inputs) if capture else losses


@torch.no_grad()
def weight_perturbed_losses_loop(model: nn.Module, x: Tensor, y: Tensor, loss_fn, sigma: float,
                                 weight_noise: dict, num_perturb: int, antithetic: bool = False):
    """Per-example losses [K + 1, batch]: pass k runs with weight += sigma s_k xi[..., :in] and
    bias += sigma s_k xi[..., in] for each layer named in weight_noise (xi [M, out, in (+1)])."""
    layers = _linear_by_name(model)
    params = dict(model.named_parameters())
    rows = [_pass_losses(model, x, y, loss_fn)]
    for k in range(num_perturb):
        shifted = dict(params)
        for name, xi in weight_noise.items():
            noise = signed_noise(xi, num_perturb, antithetic)[k] * sigma
            layer = layers[name]
            prefix = f"{name}." if name else ""
            shifted[prefix + "weight"] = layer.weight + noise[:, : layer.in_features]
            if layer.bias is not None:
                shifted[prefix + "bias"] = layer.bias + noise[:, -1]
        rows.append(_pass_losses(lambda inp: torch.func.functional_call(model, shifted, (inp,)),
                                 x, y, loss_fn))
    return torch.stack(rows)


def node_grads_with_noise(losses: Tensor, inputs: dict, node_noise: dict, sigma: float,
                          antithetic: bool, scale: float) -> dict:
    """name -> (grad_weight, grad_bias) of the node-perturbation estimate."""
    return {name: node_perturb_grad_with_noise(losses, inputs[name], xi, sigma, antithetic, scale)
            for name, xi in node_noise.items()}


def weight_grads_with_noise(losses: Tensor, weight_noise: dict, sigma: float, antithetic: bool,
                            scale: float) -> dict:
    """name -> d(objective)/d[weight | bias] [out, in (+1)] of the weight-perturbation estimate."""
    total = losses.sum(1) * scale
    return {name: perturb_estimate_with_noise(
                total.unsqueeze(1).expand(-1, xi.shape[1]), xi, sigma, antithetic, 1.0)
            for name, xi in weight_noise.items()}
