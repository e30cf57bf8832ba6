"""Optimizers for the experiments: SGD (default), Adam, and SOAP (`--rule soap`).

Per-layer learning-rate scales (the gain-matched backprop control) become one param group per
layer, so the optimizer itself applies them.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..optim import SOAP
from .models import fa_layers

OPTIMIZERS = ("sgd", "adam")
SOAP_LOSS = functools.partial(F.cross_entropy, reduction="none")  # per example, as SOAP takes it
# SOAP's probe shift in parameter space. Its curvature is a second difference of float32 losses:
# at SOAP's default h = 1e-3 it is off by 34% (median; 1.5x at worst) against float64 on the
# default sweep's model, at 1e-2 by 0.32%, while the larger shift changes the float64 curvature
# by 0.03% (python -m benchmarks.soap_precision)
SOAP_H = 1e-2


class ConfigError(ValueError):
    """An experiment setting that cannot run; the message says which and why."""


def param_groups(model: nn.Module, lr: float, layer_lr_scale: dict[str, float] | None):
    if not layer_lr_scale:
        return [{"params": list(model.parameters()), "lr": lr}]
    groups, seen = [], set()
    for name, layer in fa_layers(model):
        if name not in layer_lr_scale:
            raise ConfigError(f"layer_lr_scale has no entry for layer {name!r} "
                              f"(has {sorted(layer_lr_scale)})")
        params = [p for p in layer.parameters() if p.requires_grad]
        seen.update(id(p) for p in params)
        groups.append({"params": params, "lr": lr * float(layer_lr_scale[name]),
                       "layer": name})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr})
    return groups


def make_optimizer(model: nn.Module, rule: str, optimizer: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0, layer_lr_scale: dict[str, float] | None = None):
    groups = param_groups(model, lr, layer_lr_scale)
    if rule == "soap":
        # The three losses of a step come from one batched pass, as per-example float64 sums
        # (train() passes the batch): float32 means would drown the curvature, a second
        # difference over a shift of h, in rounding. No loss after the step: nothing reads it.
        return SOAP(groups, model=model, loss_fn=SOAP_LOSS, h=SOAP_H, lr=lr,
                    measure_actual=False)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        if momentum:
            raise ConfigError("--momentum applies to SGD only; Adam uses its own betas")
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
