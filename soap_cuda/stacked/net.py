"""StackedNet: M models of one architecture as one network. It is a copy of the first model in
which every layer with weights is replaced by its stacked twin (layers.py): the models' own
forward code (Sequential, residual blocks, pooling, activations, flatten) runs unchanged on the
wide tensors, and each model computes exactly what it computes alone, its rule, seed, B's,
schedule and statistics its own. `unstack` turns it back into ordinary models."""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..conv import FAConv1d, FAConv2d, FAConv3d
from ..modules import FALinear
from .layers import PASS_THROUGH, TWINS, StackedConv, StackedFeedbackLayer, stacked_twin

# the rank of one model's input, read from the first layer that takes it
_INPUT_RANK = {FALinear: 2, nn.Linear: 2, FAConv1d: 3, FAConv2d: 4, FAConv3d: 5,
               nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5, nn.BatchNorm2d: 4}


def _input_rank(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Unflatten):
            return 2 if module.dim in (1, -1) else None
        for kind, rank in _INPUT_RANK.items():
            if type(module) is kind:
                return rank
    return None


def _check_one_architecture(models: list[nn.Module]) -> None:
    first = dict(models[0].named_modules())
    for k, model in enumerate(models[1:], start=1):
        mods = dict(model.named_modules())
        if list(mods) != list(first) or any(type(mods[n]) is not type(first[n]) for n in first):
            raise ValueError(f"model {k} is not of model 0's architecture (its modules differ)")
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "b_matrix" not in n}
        if shapes != {n: tuple(p.shape) for n, p in models[0].named_parameters()
                      if "b_matrix" not in n}:
            raise ValueError(f"model {k} is not of model 0's architecture (its weights' shapes "
                             "differ)")
    devices = {(p.device, p.dtype) for m in models for p in m.parameters()}
    if len(devices) > 1:
        raise ValueError(f"the models must share one device and dtype, got "
                         f"{sorted(map(str, devices))}")


class StackedNet(nn.Module):
    """`stack(models)`'s network: `net(x)` -> (M, N, ...) outputs, one per model."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("stack() needs at least one model")
        _check_one_architecture(models)
        self.models = len(models)
        # what unstack() fills: each model's structure, with no storage
        self._skeletons = [copy.deepcopy(m).to("meta") for m in models]
        module, replaced = copy.deepcopy(models[0]), []
        with torch.no_grad():
            for name, _ in list(models[0].named_modules()):
                if any(name.startswith(prefix + ".") for prefix in replaced):
                    continue  # inside a module already replaced by its twin
                twin = stacked_twin([model.get_submodule(name) for model in models])
                if twin is None:
                    continue
                replaced.append(name)
                if not name:
                    module = twin
                else:
                    parent, _, child = name.rpartition(".")
                    setattr(module.get_submodule(parent), child, twin)
        self.module = module
        self.input_rank = _input_rank(models[0])
        self.names = [n for n, m in module.named_modules() if isinstance(m, StackedFeedbackLayer)]
        self.layers = [module.get_submodule(n) for n in self.names]
        # a network that ends in a conv gives the models' channels side by side
        self._wide_output = bool(self.layers) and isinstance(self.layers[-1], StackedConv)

    def forward(self, x: torch.Tensor, per_model: bool | None = None) -> torch.Tensor:
        """x: one batch for every model (a single model's input), or `per_model` one batch
        each, (M, N, ...); without `per_model`, x's rank tells (from the first layer's input
        rank). Returns (M, N, ...), model k's output at [k]."""
        m = self.models
        if per_model is None:
            if self.input_rank is None:
                raise ValueError("this stack cannot tell a shared batch from per-model batches "
                                 "by rank: call net(x, per_model=True or False)")
            if x.dim() == self.input_rank:
                per_model = False
            elif x.dim() == self.input_rank + 1:
                per_model = True
            else:
                raise ValueError(f"input of rank {self.input_rank} (one batch for every model) "
                                 f"or {self.input_rank + 1} ((M={m}, N, ...) one each) "
                                 f"expected, got {tuple(x.shape)}")
        if not per_model:
            x = x.expand(m, *x.shape)
        elif x.shape[0] != m:
            raise ValueError(f"per-model input must have the {m} models first, got "
                             f"{tuple(x.shape)}")
        out = self.module(x)
        if self._wide_output:
            out = out.reshape(out.shape[0], m, -1, *out.shape[2:]).transpose(0, 1)
        return out

    @contextlib.contextmanager
    def backprop_mode(self):
        """Inside, every model's error goes through W (exact backprop), schedules paused: the
        alignment metrics' reference, as soap_cuda.backprop_mode for one model."""
        saved = [(layer.feedback_override, layer.schedule_paused) for layer in self.layers]
        for layer in self.layers:
            layer.feedback_override, layer.schedule_paused = "bp", True
        try:
            yield
        finally:
            for layer, (override, paused) in zip(self.layers, saved):
                layer.feedback_override, layer.schedule_paused = override, paused

    def param_groups(self, lr, layer_lr_scale: dict | None = None) -> list[dict]:
        """Param groups for the stacked optimizers: `lr` a float or one per model (M,), and
        `layer_lr_scale` {feedback layer name: a float or one per model} multiplying it for
        that layer's W, bias and B (gain-matched backprop); other parameters at `lr`."""
        lr = _per_model(lr, self.models)
        if not layer_lr_scale:
            return [{"params": list(self.parameters()), "lr": lr}]
        unknown = set(layer_lr_scale) - set(self.names)
        if unknown:
            raise ValueError(f"layer_lr_scale names no feedback layer {sorted(unknown)} "
                             f"(layers: {self.names})")
        groups, seen = [], set()
        for name, layer in zip(self.names, self.layers):
            params = [p for p in layer.parameters() if p.requires_grad]
            seen.update(id(p) for p in params)
            scale = _per_model(layer_lr_scale.get(name, 1.0), self.models)
            groups.append({"params": params, "lr": lr * scale, "layer": name})
        rest = [p for p in self.parameters() if id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": lr})
        return groups

    def freeze(self, k: int) -> None:
        """Model k diverged: zeros in every one of its slices (and unit batch-norm variances),
        so it computes finite nothing from now on and disturbs no other model."""
        for module in self.module.modules():
            if hasattr(module, "freeze_model"):
                module.freeze_model(k)

    def model_state_dict(self, k: int) -> dict:
        """Model k's state_dict, as its own model (unstacked) would give it."""
        state = {}
        for name, module in self.module.named_modules():
            if hasattr(module, "model_state"):
                prefix = f"{name}." if name else ""
                state.update({prefix + key: value.clone() if torch.is_tensor(value) else value
                              for key, value in module.model_state(k).items()})
        return state


def _per_model(value, models: int) -> torch.Tensor:
    """A float or M values as a float64 tensor (M,)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() == 0:
        return t.expand(models).clone()
    if t.shape != (models,):
        raise ValueError(f"expected one value or {models} (one per model), got {tuple(t.shape)}")
    return t


def stack(models: list[nn.Module]) -> StackedNet:
    """M models of one architecture (their feedback layers: FALinear, FAConv*; batch norm,
    activations, pooling, flatten and containers; each model with its own rule, seed and B's)
    as one StackedNet, each layer of all the models one batched op. The models are copied."""
    return StackedNet(list(models))


def unstack(net: StackedNet) -> list[nn.Module]:
    """The stack's models as ordinary models again: each a model of its original structure
    whose state_dict (weights, B, B0, schedules, batch-norm statistics) is its slice of the
    stack, as if it had been trained alone."""
    device = next(iter(net.parameters())).device
    models = []
    for k, skeleton in enumerate(net._skeletons):
        model = copy.deepcopy(skeleton).to_empty(device=device)
        model.load_state_dict(net.model_state_dict(k))
        model.train(net.training)
        models.append(model)
    return models


def per_model_loss(output: torch.Tensor, target: torch.Tensor,
                   loss_fn=F.cross_entropy) -> torch.Tensor:
    """Each model's mean loss (M,): output (M, N, ...), target one for all models (class
    indices (N, ...), or values shaped as one model's output) or (M, ...) one each; loss_fn
    takes reduction="none"."""
    m, n = output.shape[:2]
    classes = not target.is_floating_point()
    shared = target.dim() == output.dim() - (2 if classes else 1)
    if shared:
        target = target.expand(m, *target.shape)
    losses = loss_fn(output.reshape(m * n, *output.shape[2:]),
                     target.reshape(m * n, *target.shape[2:]), reduction="none")
    return losses.view(m, -1).mean(1)


def register(kind: type, twin=None) -> None:
    """Teach stack() a module type: without `twin`, one that computes per channel or per
    element (or only holds others) and so runs as it is on stacked tensors; with `twin`,
    twin(list of the M models' modules) -> the stacked module."""
    if twin is None:
        PASS_THROUGH.add(kind)
    else:
        TWINS[kind] = twin


