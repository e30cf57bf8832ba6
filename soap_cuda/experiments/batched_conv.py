"""The conv models of a sweep (LeNet-5, ResNet-20), stacked: M models as one network whose
channels are the M models' channels side by side (model-major), built from a copy of the first
model in which every layer is replaced by its stacked twin:

  FA conv      one grouped convolution (`fa_conv`, groups x M): each model's filters see only its
               own channels, and its error goes back through its own B, grouped the same way
  batch norm   one batch norm over M x C channels: every model keeps its own statistics
  FA linear    one `fa_linear_stacked`; a flattened (N, M x features) input is first split into
               (M, N, features)
  option-A shortcut, the input's unflatten: the same per model

The models' own forward code (Sequential, the ResNet blocks, pooling, activations, flatten) then
runs unchanged on the wide tensors, and each model computes exactly what it computes alone.
Parameters keep the layout of the layer they replace with the model dimension first, so every
one of them views as (M, -1) for per-model updates. The interface is StackedMLP's (batched.py).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from soap_cuda.conv import FAConv2d
from soap_cuda.functional import fa_conv
from soap_cuda.modules import FALinear

from .batched_dfa import dfa_output
from .conv_models import BasicBlock, ResNetCifar, _ShortcutA
from .models import build_conv, fa_layers
from .stacked_rules import StackedRules, sync_proxies

# layers that compute per channel (or have no weights): they run as they are on wide tensors
_PER_CHANNEL = (nn.Sequential, nn.Tanh, nn.ReLU, nn.Sigmoid, nn.AvgPool2d, nn.MaxPool2d,
                nn.Flatten, nn.Identity, BasicBlock, ResNetCifar)


def _cat(tensors) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors])


def _feedback_matrices(layers, like_weight: bool) -> torch.Tensor:
    """The models' B in their stacked weight's layout (`like_weight`: side by side along W's
    first dim), or stacked (M, ...): linear layers, and every DFA B, (M, classes, k)."""
    if like_weight and layers[0].feedback != "dfa":
        return _cat(layer.b_matrix for layer in layers)
    return torch.stack([layer.b_matrix.detach() for layer in layers])


class _StackedLayer(nn.Module):
    """What the stacked FA layers share: B, the rule override of the alignment probes, and
    DFA's tape (set by StackedConvNet.forward: a list to put (input, B, layout) on)."""

    def _setup(self, layers, concatenated: bool) -> None:
        self.register_buffer("b_matrix", _feedback_matrices(layers, concatenated))
        self.dfa = layers[0].feedback == "dfa"
        self.feedback_override = None  # "bp": the error through W (the alignment probes)
        self.tape = None

    def _compute(self, x: torch.Tensor, fa, models_first: bool) -> torch.Tensor:
        """fa(input, B) with B = W under "bp"; under DFA the input is detached (its error
        comes from the network's output error) and recorded on the tape."""
        if self.feedback_override == "bp" or self.dfa:
            if self.dfa and self.feedback_override is None and self.tape is not None \
                    and x.requires_grad:
                self.tape.append((x, self.b_matrix, models_first))
                x = x.detach()
            return fa(x, self.weight.detach())
        return fa(x, self.b_matrix)


class _StackedConv(_StackedLayer):
    def __init__(self, layers: list[FAConv2d]):
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ValueError("stacked conv layers take zero padding given in numbers")
        self.weight = nn.Parameter(_cat(layer.weight for layer in layers))
        self.bias = None if first.bias is None else nn.Parameter(
            _cat(layer.bias for layer in layers))
        self._setup(layers, concatenated=True)
        self.stride, self.padding = list(first.stride), list(first.padding)
        self.dilation, self.groups = list(first.dilation), first.groups * len(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(x, lambda x, b: fa_conv(
            x, self.weight, self.bias, b, self.stride, self.padding, self.dilation,
            self.groups), models_first=False)


class _StackedLinear(_StackedLayer):
    def __init__(self, layers: list[FALinear]):
        super().__init__()
        self.models = len(layers)
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = None if layers[0].bias is None else nn.Parameter(
            torch.stack([layer.bias.detach() for layer in layers]))
        self._setup(layers, concatenated=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def fa(x, b):
            if x.dim() == 2:  # flattened channels side by side: model-major
                x = x.view(x.shape[0], self.models, -1).transpose(0, 1)
            return torch.ops.soap_cuda.fa_linear_stacked(x.contiguous(), self.weight, self.bias,
                                                         b)
        return self._compute(x, fa, models_first=x.dim() == 3)


class _StackedBatchNorm(nn.Module):
    """nn.BatchNorm2d's training and evaluation arithmetic over the M x C stacked channels."""

    def __init__(self, norms: list[nn.BatchNorm2d]):
        super().__init__()
        first = norms[0]
        if not (first.affine and first.track_running_stats and first.momentum is not None):
            raise ValueError("stacked batch norm takes affine layers with running statistics")
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(_cat(n.weight for n in norms))
        self.bias = nn.Parameter(_cat(n.bias for n in norms))
        self.register_buffer("running_mean", _cat(n.running_mean for n in norms))
        self.register_buffer("running_var", _cat(n.running_var for n in norms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class _StackedShortcutA(nn.Module):
    def __init__(self, shortcut: _ShortcutA, models: int):
        super().__init__()
        self.pad, self.models = shortcut.pad, models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        n, channels, h, w = x.shape
        x = F.pad(x.reshape(n, self.models, channels // self.models, h, w),
                  (0, 0, 0, 0, self.pad, self.pad))
        return x.reshape(n, -1, h, w)


class _StackedImage(nn.Module):
    """Flat images, (M, N, C*H*W) per model or (N, C*H*W) shared, to (N, M*C, H, W)."""

    def __init__(self, unflatten: nn.Unflatten, models: int):
        super().__init__()
        self.shape, self.models = tuple(unflatten.unflattened_size), models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.models, *x.shape)
        m, n = x.shape[:2]
        c, h, w = self.shape
        return x.reshape(m, n, c, h, w).transpose(0, 1).reshape(n, m * c, h, w)


def _stacked_twin(modules: list[nn.Module]) -> nn.Module | None:
    """The stacked replacement of the M models' module at one place, None to keep it."""
    first, m = modules[0], len(modules)
    if isinstance(first, FAConv2d):
        return _StackedConv(modules)
    if isinstance(first, FALinear):
        return _StackedLinear(modules)
    if isinstance(first, nn.BatchNorm2d):
        return _StackedBatchNorm(modules)
    if isinstance(first, _ShortcutA):
        return _StackedShortcutA(first, m)
    if isinstance(first, nn.Unflatten):
        return _StackedImage(first, m)
    if isinstance(first, _PER_CHANNEL):
        return None
    raise ValueError(f"no stacked form for {type(first).__name__}")


class StackedConvNet(StackedRules):
    """The conv models of one batch, each built by `build_conv` from its own config and seed
    (so each starts exactly where its sequential run does), stacked as the module docstring
    says. Every rule: bp models keep B = W, Kolen-Pollack ones train B with W's gradient, the
    sign rules sync, DFA models (a batch of their own) record each layer's input on a tape
    and take its error from the output's (B (M, classes, k))."""

    def __init__(self, cfgs, data):
        device = data.x_train.device
        models = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            models.append(build_conv(cfg.model, data.image_shape, data.num_classes, cfg.rule,
                                     cfg.sync_every, device, cfg.sync_at_start))
        self.m = len(models)
        self.rules = [cfg.rule for cfg in cfgs]
        self.dfa = self.rules[0] == "dfa"  # group_key keeps DFA models among themselves
        self.names = [name for name, _ in fa_layers(models[0])]
        self.module = copy.deepcopy(models[0])
        for mod in self.module.modules():  # DFA's tape hooks: the stacked net keeps its own
            mod._forward_pre_hooks.clear()
            mod._forward_hooks.clear()
        with torch.no_grad():
            for name, _ in list(models[0].named_modules()):
                if not name:
                    continue
                twin = _stacked_twin([model.get_submodule(name) for model in models])
                if twin is not None:
                    parent, _, child = name.rpartition(".")
                    setattr(self.module.get_submodule(parent), child, twin.to(device))
        self.module.train()
        self.fa_modules = [self.module.get_submodule(name) for name in self.names]
        self.layers = []
        for name, mod in zip(self.names, self.fa_modules):
            sources = [model.get_submodule(name) for model in models]
            proxies = sync_proxies(mod.weight.view(self.m, *sources[0].weight.shape),
                                   mod.b_matrix.view(self.m, *sources[0].b_matrix.shape),
                                   sources)
            self.layers.append(SimpleNamespace(weight=mod.weight, bias=mod.bias,
                                               b_matrix=mod.b_matrix, proxies=proxies))
        self._init_rules(device)
        # examples per evaluation pass (x M images): a CPU is fastest with passes that stay in
        # its caches (256 LeNet images: 0.56 s for 1,000 examples of 8 models, 0.79 s at 512)
        self.eval_chunk = max(1, (256 if device.type == "cpu" else 8192) // self.m)
        # alignment probe examples per pass (x M images, kept for a backward: a ResNet-20
        # holds ~3 MB per image, so 2,048 images ~6 GB)
        self.probe_chunk = max(1, (256 if device.type == "cpu" else 2048) // self.m)

    def _own_parameters(self):
        """(tensor, FA layer name or None, is B) for every trained tensor."""
        fa = {id(mod): name for name, mod in zip(self.names, self.fa_modules)}
        out = []
        for mod in self.module.modules():
            if isinstance(mod, (_StackedLayer, _StackedBatchNorm)):
                name = fa.get(id(mod))
                out += [(p, name, False) for p in (mod.weight, mod.bias) if p is not None]
                if name is not None and self.learns_b:
                    out.append((mod.b_matrix, name, True))
        return out

    def parameters(self) -> list[torch.Tensor]:
        return [p for p, _, _ in self._own_parameters()]

    def param_specs(self) -> list[tuple]:
        """(FA layer name or None, is B) per parameters() entry: what its learning rate is."""
        return [(name, is_b) for _, name, is_b in self._own_parameters()]

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def per_model(self, t: torch.Tensor, output: bool = False) -> torch.Tensor:
        """A stacked parameter, or (`output`) a layer's output (N, M*C, H, W) or (M, N, F),
        as (M, -1)."""
        if output and t.dim() == 4:
            return t.reshape(t.shape[0], self.m, -1).transpose(0, 1).reshape(self.m, -1)
        return t.reshape(self.m, -1)

    def forward(self, x: torch.Tensor, backprop: bool = False, keep=None) -> torch.Tensor:
        """x (M, N, C*H*W), or (N, C*H*W) shared by every model -> logits (M, N, classes);
        `keep` collects each FA layer's output; `backprop`: every model's error through W."""
        hooks = [] if keep is None else [
            mod.register_forward_hook(lambda _, __, out: keep.append(out))
            for mod in self.fa_modules]
        tape = [] if self.dfa and not backprop and torch.is_grad_enabled() else None
        for mod in self.fa_modules:
            mod.feedback_override = "bp" if backprop else None
            mod.tape = tape
        try:
            out = self.module(x)
        finally:
            for mod in self.fa_modules:
                mod.feedback_override = None
                mod.tape = None
            for hook in hooks:
                hook.remove()
        return dfa_output(out, tape) if tape else out

    def freeze(self, k: int) -> None:
        """As StackedRules.freeze, and unit variances in the model's batch norm statistics."""
        super().freeze(k)
        with torch.no_grad():
            for mod in self.module.modules():
                if isinstance(mod, _StackedBatchNorm):
                    mod.running_mean.view(self.m, -1)[k].zero_()
                    mod.running_var.view(self.m, -1)[k].fill_(1.0)

