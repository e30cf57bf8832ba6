"""Measurements that expose what a feedback rule really does.

- `feedback_alignment(model)`: per FALinear, the angle between its feedback matrix B and W,
  and ||B|| / ||W||. No data needed; costs one pass over the weights.
- `error_signal_alignment(model, loss_fn, x, y)`: per FALinear, the angle between the error
  signal dL/d(output) that the model's rule delivers to that layer and the one backprop would
  deliver, with their norm ratio ||FA|| / ||BP|| (the rule's effective learning-rate gain at
  that layer), and the same for the weight gradients. Two forward/backward passes on one
  batch; `.grad` and the sync counters are left untouched.
All results are plain floats, computed in float64.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .feedback import backprop_mode, feedback_layers, schedule_paused


def angle_deg(a: Tensor, b: Tensor) -> float:
    """Angle between two tensors seen as vectors, in degrees (nan if either is zero, or if
    their shapes differ)."""
    if a.shape != b.shape:
        return math.nan
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return math.nan
    cos = torch.clamp(a.dot(b) / denom, -1.0, 1.0)
    return math.degrees(math.acos(cos.item()))


def norm_ratio(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.nan
    nb = b.detach().double().norm().item()
    return a.detach().double().norm().item() / nb if nb else math.nan


def _names(model: nn.Module) -> dict:
    layers = set(feedback_layers(model))
    return {module: name or type(module).__name__ for name, module in model.named_modules()
            if module in layers}


def feedback_alignment(model: nn.Module) -> dict[str, dict[str, float]]:
    """{layer name: {"angle_deg": angle(B, W), "norm_ratio": ||B|| / ||W||}}; nan for a DFA
    layer, whose B (network outputs x inputs) has no W of its shape to compare with (its
    alignment is error_signal_alignment's)."""
    def compare(layer, measure):
        if layer.feedback == "dfa":  # B maps the network's error, not this layer's: no W to match
            return math.nan
        return measure(layer.feedback_matrix, layer.weight)
    return {name: {"angle_deg": compare(layer, angle_deg), "norm_ratio": compare(layer, norm_ratio)}
            for layer, name in _names(model).items()}


def _error_signals(model, loss_fn, x, y, layers):
    """dL/d(output) of each layer and dL/dW of each layer, by the model's current rules."""
    outputs = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out: outputs.__setitem__(mod, out))
             for layer in layers]
    try:
        loss = loss_fn(model(x), y)
    finally:
        for hook in hooks:
            hook.remove()
    tensors = [outputs[layer] for layer in layers] + [layer.weight for layer in layers]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return grads[:len(layers)], grads[len(layers):]


def error_signal_alignment(model: nn.Module, loss_fn, x: Tensor, y: Tensor
                           ) -> dict[str, dict[str, float]]:
    """Per FALinear: {"angle_deg", "norm_ratio", "weight_grad_angle_deg",
    "weight_grad_norm_ratio"} of the rule's error signal against backprop's, on one batch.

    Both passes see the same randomness (dropout masks): the RNG state is replayed.
    """
    names = _names(model)
    layers = list(names)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(x.device) if devices else None
        with schedule_paused(model):
            fa_out, fa_w = _error_signals(model, loss_fn, x, y, layers)
        torch.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, x.device)
        with backprop_mode(model):
            bp_out, bp_w = _error_signals(model, loss_fn, x, y, layers)
    result = {}
    for i, layer in enumerate(layers):
        result[names[layer]] = {
            "angle_deg": angle_deg(fa_out[i], bp_out[i]),
            "norm_ratio": norm_ratio(fa_out[i], bp_out[i]),
            "weight_grad_angle_deg": angle_deg(fa_w[i], bp_w[i]),
            "weight_grad_norm_ratio": norm_ratio(fa_w[i], bp_w[i]),
        }
    return result
