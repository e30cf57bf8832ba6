"""Feedback sync of a whole model: the fused op (`soap_cuda.sync_feedback`, one native call for
all layers) against the per-layer PyTorch expression a user would otherwise write."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import soap_cuda

RULES = ("sign", "rescaled_sign")
KINDS = ("fused", "per-layer")


@dataclass(frozen=True)
class SyncModel:
    name: str
    dims: tuple
    gpu_only: bool = False


MODELS = (
    SyncModel("mlp784-1000-10", (784, 1000, 10)),
    SyncModel("mlp4x2048", (2048,) * 5),           # 16.8M parameters: the >10M target, on CPU too
    SyncModel("mlp8x4096", (4096,) * 9, gpu_only=True),  # 134M: well past any cache
)
TINY = SyncModel("tiny16-32-4", (16, 32, 4))


def make_model(dims, rule: str, device, dtype) -> nn.Sequential:
    return nn.Sequential(*[soap_cuda.FALinear(a, b, device=device, dtype=dtype, feedback=rule)
                           for a, b in zip(dims[:-1], dims[1:])])


def per_layer_sync(model: nn.Module) -> None:
    """The plain PyTorch rule, one layer at a time (what the seed's training loop did)."""
    with torch.no_grad():
        for layer in model:
            if layer.feedback == "sign":
                layer.b_matrix.copy_(torch.sign(layer.weight))
            else:  # rescaled_sign
                layer.b_matrix.copy_(torch.sign(layer.weight) * layer.b_init.abs())


def parameters(model: nn.Module) -> int:
    return sum(layer.weight.numel() for layer in model)


def bytes_moved(model: nn.Module) -> int:
    """The fewest bytes a sync must move: read W (and |B0| where the rule uses it), write B."""
    total = 0
    for layer in model:
        w = layer.weight
        streams = 3 if layer.feedback == "rescaled_sign" else 2
        total += streams * w.numel() * w.element_size()
    return total


def callables(model: nn.Module):
    return {"fused": lambda: soap_cuda.sync_feedback(model), "per-layer": lambda: per_layer_sync(model)}
