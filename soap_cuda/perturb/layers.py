"""Finding a model's linear layers and running one of them on a K-tiled batch.

A pass plan says, per linear layer (by module name), whether its pre-activations get node noise
(fused with bias and activation in `perturbed_bias_act_`, over the GEMM's output), or whether
each row block of the tiled batch uses its own weights (weight perturbation, or SOAP's weight
sets), and whether to keep the layer's clean input (for the gradient estimate).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..modules import FALinear
from ..reference.perturb import ACTIVATIONS

LINEAR_TYPES = (nn.Linear, FALinear)
FUSABLE_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                       nn.Identity: "identity"}


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every nn.Linear / FALinear, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]


def select_layers(model: nn.Module, layers=None) -> list[tuple[int, str, nn.Module]]:
    """(index among the linear layers, name, module) for `layers`: None (all), or names,
    indices among the linear layers, or the modules themselves."""
    found = linear_layers(model)
    if not found:
        raise ValueError("the model has no nn.Linear or FALinear layer to perturb")
    if layers is None:
        return [(i, name, m) for i, (name, m) in enumerate(found)]
    chosen = []
    for item in layers:
        for i, (name, m) in enumerate(found):
            if item is m or item == name or (isinstance(item, int) and item == i):
                chosen.append((i, name, m))
                break
        else:
            raise ValueError(f"layer {item!r} is not a linear layer of the model (linear layers: "
                             f"{[name for name, _ in found]})")
    return sorted(set(chosen), key=lambda t: t[0])


@dataclass
class PassPlan:
    blocks: int                       # K + 1 row blocks (block 0: the clean pass)
    sigma: float = 0.0
    seed: int = 0
    antithetic: bool = False
    node_offsets: dict = field(default_factory=dict)   # name -> noise stream offset
    weight_sets: dict = field(default_factory=dict)    # name -> (W [blocks, out, in], b or None)
    capture: set = field(default_factory=set)          # names whose clean input to keep
    inputs: dict = field(default_factory=dict)         # filled: name -> clean input rows


def run_linear(name: str, layer: nn.Module, h: Tensor, plan: PassPlan, activation: str,
               shared: bool = False) -> tuple[Tensor, bool]:
    """The layer (then `activation`) on the tiled batch h [(K+1) B, ..., in], or, with
    shared=True, on h [B, ..., in] standing for that batch in every row block (the clean input
    before any perturbed layer: its GEMM runs once, on B rows). Returns (output, shared)."""
    lead, width_in = h.shape[:-1], h.shape[-1]
    rows = h.reshape(-1, width_in)
    if name in plan.capture:
        plan.inputs[name] = rows if shared else rows[: rows.shape[0] // plan.blocks]
    if name in plan.weight_sets:
        weights, biases = plan.weight_sets[name]
        if shared:  # [B, in] broadcast against [blocks, in, out]
            out = torch.matmul(rows, weights.transpose(1, 2))
            lead = (plan.blocks * lead[0], *lead[1:])
        else:
            out = torch.bmm(rows.view(plan.blocks, -1, width_in), weights.transpose(1, 2))
        if biases is not None:
            out = out + biases.unsqueeze(1)
        out = ACTIVATIONS[activation](out.reshape(plan.blocks * rows.shape[0] if shared
                                                  else rows.shape[0], -1))
        shared = False
    else:
        pre = rows.mm(layer.weight.t())
        if name in plan.node_offsets:
            if shared:
                pre = pre.repeat(plan.blocks, 1)
                lead = (plan.blocks * lead[0], *lead[1:])
                shared = False
            # pre is this call's own fresh GEMM output: written over, the tiled batch is held
            # once (no second [(K+1) B, out] buffer)
            torch.ops.soap_cuda.perturbed_bias_act_(
                pre, layer.bias, plan.sigma, plan.seed, plan.node_offsets[name], plan.blocks - 1,
                plan.antithetic, activation)
        else:  # one unperturbed block: bias and activation, no noise
            torch.ops.soap_cuda.perturbed_bias_act_(pre, layer.bias, 0.0, 0, 0, 0, False,
                                                    activation)
        out = pre
    return out.reshape(*lead, out.shape[-1]), shared


def _sequential_leaves(model: nn.Sequential):
    for m in model:
        if isinstance(m, nn.Sequential):
            yield from _sequential_leaves(m)
        else:
            yield m


def run_sequential(model: nn.Module, x: Tensor, plan: PassPlan) -> Tensor:
    """Walks an nn.Sequential, fusing each linear layer with a following ReLU/Tanh/Sigmoid.
    x is the untiled batch [B, ...]: every row block sees it until the first layer whose
    pre-activations or weights differ between blocks, so everything before that layer (its own
    GEMM included) runs once on B rows and is tiled there."""
    names = {id(m): name for name, m in model.named_modules()}
    leaves = list(_sequential_leaves(model))
    h, shared = x, True
    i = 0
    while i < len(leaves):
        m = leaves[i]
        if isinstance(m, LINEAR_TYPES):
            nxt = leaves[i + 1] if i + 1 < len(leaves) else None
            activation = FUSABLE_ACTIVATIONS.get(type(nxt), None)
            h, shared = run_linear(names[id(m)], m, h, plan, activation or "identity", shared)
            i += 2 if activation else 1
        else:
            h = m(h)
            i += 1
    return tile(h, plan.blocks) if shared else h


def tile(t: Tensor, blocks: int) -> Tensor:
    """[B, ...] -> [blocks * B, ...], block-major (block k holds the whole batch)."""
    return t.repeat(blocks, *([1] * (t.dim() - 1)))


@contextlib.contextmanager
def _patched_linears(model: nn.Module, plan: PassPlan):
    """Any module: each linear layer's forward runs `run_linear` for the duration."""
    patched = []
    try:
        for name, m in linear_layers(model):
            m.forward = (lambda inp, _n=name, _m=m: run_linear(_n, _m, inp, plan, "identity")[0])
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def run_model(model: nn.Module, x: Tensor, plan: PassPlan) -> Tensor:
    """The model on the untiled batch x [B, ...] for every row block: output [blocks * B, ...]."""
    if isinstance(model, nn.Sequential):
        return run_sequential(model, x, plan)
    with _patched_linears(model, plan):
        return model(tile(x, plan.blocks))
