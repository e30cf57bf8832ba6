"""convert(): swap every nn.Linear and nn.Conv1d/2d/3d of a model for its feedback-alignment
twin (FALinear, FAConv1d/2d/3d), keeping the trained weights."""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from . import dfa
from .conv import FAConv1d, FAConv2d, FAConv3d
from .feedback_layer import FeedbackLayerMixin
from .modules import FALinear

log = logging.getLogger("soap_cuda")

# exact torch type -> (FA twin, how to build it from the torch layer)
_TWINS = {
    nn.Linear: FALinear.from_linear,
    nn.Conv1d: FAConv1d.from_conv,
    nn.Conv2d: FAConv2d.from_conv,
    nn.Conv3d: FAConv3d.from_conv,
}
# Layers with weights that convert() cannot turn into FA layers; a model that has them would
# silently train those layers by backprop, so each is named in a warning.
_NOT_CONVERTED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd,
                  nn.modules.lazy.LazyModuleMixin)


def _describe(layer) -> str:
    if isinstance(layer, nn.Linear):
        return f"nn.Linear({layer.in_features}, {layer.out_features})"
    return f"nn.{type(layer).__name__}({layer.in_channels}, {layer.out_channels}, " \
           f"kernel_size={tuple(layer.kernel_size)})"


def convert(model: nn.Module, *, inplace: bool = False, generator: torch.Generator | None = None,
            skip: tuple[str, ...] = (), verbose: bool = False, return_swapped: bool = False,
            example_input=None, **layer_kwargs):
    """Return `model` with each `nn.Linear` and `nn.Conv1d/2d/3d` replaced by its FA twin.

    Every such layer anywhere in the module tree is swapped (nested Sequentials, ModuleDicts,
    ResNet blocks, custom modules). Weights and biases are kept; each new layer gets a fresh
    xavier-normal `b_matrix` (from `generator` when given, for reproducibility). `skip` names
    modules (qualified names, as in `named_modules()`) to leave as they are, e.g. the first conv
    or the classifier. `layer_kwargs` go to every new layer (`feedback=`, `sync_every=`, ...).

    Layers that have weights but no FA twin (nn.ConvTranspose*, nn.Lazy*, nn.Bilinear, and
    subclasses of the torch layers, such as MultiheadAttention's output projection, which its
    owner calls without running its forward) are named in a warning: they keep learning by
    backprop. What was swapped is logged on the "soap_cuda" logger, printed when `verbose`, and
    returned as a list of qualified names when `return_swapped`.

    `feedback="dfa"` (direct feedback alignment) sizes each layer's B from the network: one
    no-grad forward of `example_input` gives the output size and every conv layer's input shape
    (without it, the output size is the out_features of the last nn.Linear, and conv layers are
    an error); the returned model is set up with `soap_cuda.enable_dfa`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    use_dfa = layer_kwargs.get("feedback") == "dfa"
    dfa_plan = dfa.plan_sizes(model, example_input, tuple(_TWINS)) if use_dfa else {}
    swapped, left = [], []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            qualified = f"{name}.{child_name}" if name else child_name
            if qualified in skip or isinstance(child, FeedbackLayerMixin):
                continue
            build = _TWINS.get(type(child))
            if build is None:
                if isinstance(child, _NOT_CONVERTED):
                    left.append(f"{qualified} ({type(child).__name__})")
                continue
            layer = build(child, generator=generator, **layer_kwargs,
                          **dfa_plan.get(qualified, {}))
            setattr(module, child_name, layer)
            swapped.append(qualified)
            line = f"soap_cuda.convert: {qualified}: {_describe(child)} -> {type(layer).__name__}"
            log.info(line)
            if verbose:
                print(line)
    if left:
        warnings.warn("soap_cuda.convert: these layers have no feedback-alignment twin and keep "
                      "learning by backprop: " + ", ".join(left), stacklevel=2)
    if not swapped:
        log.warning("soap_cuda.convert: the model has no nn.Linear or nn.Conv layer to swap")
    if use_dfa:
        dfa.enable_dfa(model)
    return (model, swapped) if return_swapped else model
