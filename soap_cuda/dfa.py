"""Direct feedback alignment (Nøkland 2016): every layer's input error comes straight from the
network's output error e = dL/dy through the layer's own fixed random matrix B.

A DFA layer (FALinear / FAConv* with feedback="dfa") computes its output from a detached input,
so autograd never computes its grad_input GEMM, and records (layer, input, output) on the tape
of the running model forward. When the model's forward returns, a hook wraps the output in
`_DFAOutput`, an identity whose backward receives e and hands every recorded input its error
e @ B_i (reshaped to the input's shape), all from one GEMM against the concatenated B's
(`torch.ops.soap_cuda.dfa_project`). Each layer then gets its weight and bias gradients from the
grad_output autograd brings it, as for any layer: the output layer's is e itself, a hidden
layer's is (e @ B_{l+1}) through the activation's derivative. No layer-to-layer error exists,
so a DFA backward does one GEMM per layer (the weight gradient) where backprop does two.

B has shape (out, k): out is the network's output size, k the layer's input size per row
(in_features for a linear layer; C x spatial size of one example for a conv layer).
`soap_cuda.convert(model, feedback="dfa", example_input=x)` sizes every B and calls
`enable_dfa(model)`; a model built from DFA layers by hand calls `enable_dfa` itself.
The graph is explicit: several forwards before one backward, layers used twice, torch.compile
and DDP need nothing special. The model's output must be the output of its last DFA layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

_TAPES: list["_Tape"] = []  # one per model forward in progress (innermost last)


@dataclass
class _Tape:
    layers: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    # per input: None (one model), or a stacked layout (soap_cuda.stacked): MODELS_FIRST, an
    # input (M, N, ...), or CHANNELS, the models' channels side by side (N, M * C, ...)
    layouts: list = field(default_factory=list)


MODELS_FIRST, CHANNELS = "models_first", "channels"


def xavier_std(b_matrix: Tensor) -> float:
    """xavier-normal's std for a DFA matrix (out, k): sqrt(2 / (out + k))."""
    out, k = b_matrix.shape
    return math.sqrt(2.0 / (out + k))


def dfa_shape(layer, dfa_outputs, dfa_input_shape=None) -> tuple[int, int]:
    """b_matrix's shape for a DFA layer, with the checks of its constructor arguments."""
    if dfa_outputs is None or isinstance(dfa_outputs, bool) or int(dfa_outputs) != dfa_outputs \
            or dfa_outputs <= 0:
        raise ValueError(f"feedback='dfa' needs dfa_outputs, the network's output size (a "
                         f"positive int), got {dfa_outputs!r}; soap_cuda.convert(model, "
                         f"feedback='dfa', example_input=x) finds it")
    if hasattr(layer, "in_features"):
        return int(dfa_outputs), layer.in_features
    if dfa_input_shape is None:
        raise ValueError("a conv layer with feedback='dfa' needs dfa_input_shape, the shape of "
                         "one example's input (channels, *spatial); soap_cuda.convert(model, "
                         "feedback='dfa', example_input=x) finds it")
    shape = tuple(int(s) for s in dfa_input_shape)
    spatial = layer.weight.dim() - 2
    if len(shape) != spatial + 1 or shape[0] != layer.in_channels:
        raise ValueError(f"dfa_input_shape must be ({layer.in_channels}, {spatial} spatial "
                         f"sizes) for this layer, got {tuple(dfa_input_shape)}")
    return int(dfa_outputs), math.prod(shape)


def record(layer, input: Tensor, output: Tensor, layout: str | None = None) -> None:
    """A DFA layer's forward under grad: put (layer, input, output) on the running tape;
    `layout` for a stacked layer (see _Tape)."""
    if not _TAPES:
        raise RuntimeError(f"{type(layer).__name__}(feedback='dfa') ran outside a model set up "
                           "for direct feedback alignment: call soap_cuda.enable_dfa(model) on "
                           "the network whose output the error comes from (soap_cuda.convert("
                           "model, feedback='dfa') does it)")
    tape = _TAPES[-1]
    tape.layers.append(layer)
    tape.inputs.append(input)
    tape.outputs.append(output)
    tape.layouts.append(layout)


def _open_tape(model, args) -> None:
    _TAPES.append(_Tape())


def _close_tape(model, args, output):
    tape = _TAPES.pop()
    if not tape.layers or output is None:  # evaluation / no_grad, or the forward raised
        return None
    if not isinstance(output, Tensor) or output is not tape.outputs[-1]:
        raise RuntimeError(
            f"direct feedback alignment needs the output of {type(model).__name__} to be the "
            f"output of its last DFA layer ({type(tape.layers[-1]).__name__}), so that the "
            f"error at that output is e = dL/dy; got {type(output).__name__} from elsewhere. "
            "Apply the loss's own activation (softmax, ...) outside the model, or convert the "
            "output layer too")
    out = output.shape[-1] if output.dim() else 0
    rows = output.numel() // out if out else 0
    grads, matrices, layouts = [], [], []
    for layer, x, layout in zip(tape.layers, tape.inputs, tape.layouts):
        b = layer.b_matrix  # (out, k), or (M, out, k) for a stacked layer
        if b.shape[-2] != out:
            raise RuntimeError(f"{type(layer).__name__}(feedback='dfa') has b_matrix "
                               f"{tuple(b.shape)} but the network's output size is {out}")
        if not x.requires_grad:
            continue  # the network's input: no error needed
        if x.numel() != rows * b.shape[-1]:
            raise RuntimeError(f"{type(layer).__name__}(feedback='dfa'): its input "
                               f"{tuple(x.shape)} is not {rows} rows of b_matrix's "
                               f"{b.shape[-1]} (the network output has {rows} rows of {out})")
        grads.append(x)
        matrices.append(b)
        layouts.append(layout)
    if not grads:
        return None
    return _DFAOutput.apply(output, len(grads), tuple(layouts), *grads, *matrices)


def _project(error: Tensor, matrices: list[Tensor]) -> Tensor:
    """e @ cat(B's): (rows, sum of k) for one model (the native op), or (M, N, sum of k) for a
    stacked network's error (M, N, out) and B's (M, out, k), one batched GEMM."""
    if matrices[0].dim() == 3:
        return torch.bmm(error, torch.cat(matrices, dim=2))
    return torch.ops.soap_cuda.dfa_project(error, matrices)


class _DFAOutput(torch.autograd.Function):
    """Identity on the network output; its backward gives every recorded input e @ B_i."""

    @staticmethod
    def forward(ctx, output, count, layouts, *tensors):
        inputs, matrices = tensors[:count], tensors[count:]
        ctx.count, ctx.layouts = count, layouts
        ctx.input_meta = [(x.shape, x.dtype) for x in inputs]
        ctx.save_for_backward(*matrices)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        matrices = [b.to(error.dtype) for b in ctx.saved_tensors]
        projected = _project(error, matrices)
        grads, start = [], 0
        for (shape, dtype), b, layout in zip(ctx.input_meta, matrices, ctx.layouts):
            k = b.shape[-1]
            grad = projected[..., start:start + k]
            if layout == CHANNELS:  # (M, N, k) -> (N, M, k): the models' channels side by side
                grad = grad.transpose(0, 1)
            grads.append(grad.reshape(shape).to(dtype))
            start += k
        return (error, None, None, *grads, *([None] * ctx.count))


def enable_dfa(model: nn.Module) -> nn.Module:
    """Set `model` up as the network whose output error drives its DFA layers (idempotent)."""
    if not getattr(model, "_soap_cuda_dfa", False):
        model.register_forward_pre_hook(_open_tape)
        model.register_forward_hook(_close_tape, always_call=True)
        model._soap_cuda_dfa = True
    return model


def plan_sizes(model: nn.Module, example_input, twins: tuple) -> dict:
    """{qualified name: dfa kwargs} for every layer of a type in `twins` that convert() will
    swap: the network's output size, and each conv layer's per-example input shape, read from
    one no-grad forward of `example_input`; without it, the output size is the out_features of
    the model's last nn.Linear (module order), and conv layers cannot be sized."""
    layers = {name: m for name, m in model.named_modules() if type(m) in twins}
    if example_input is None:
        if any(not isinstance(m, nn.Linear) for m in layers.values()):
            raise ValueError("convert(feedback='dfa') needs example_input= to size the "
                             "feedback matrices of conv layers (their input sizes)")
        linear = [m for m in layers.values() if isinstance(m, nn.Linear)]
        if not linear:
            return {}
        return {name: {"dfa_outputs": linear[-1].out_features} for name in layers}
    shapes = {}

    def remember(name):
        def hook(module, args, output):
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: output unchanged
        return hook

    hooks = [m.register_forward_hook(remember(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            output = model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    out = output.shape[-1]
    plan = {}
    for name, m in layers.items():
        kwargs = {"dfa_outputs": out}
        if not isinstance(m, nn.Linear):
            if name not in shapes:
                raise ValueError(f"convert(feedback='dfa'): {name} did not run on example_input")
            spatial = m.weight.dim() - 2
            kwargs["dfa_input_shape"] = shapes[name][-(spatial + 1):]
        plan[name] = kwargs
    return plan
