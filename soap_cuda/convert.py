"""convert(): swap every nn.Linear of a model for an FALinear that keeps the trained weights."""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .modules import FALinear

log = logging.getLogger("soap_cuda")


def convert(model: nn.Module, *, inplace: bool = False, generator: torch.Generator | None = None,
            skip: tuple[str, ...] = (), verbose: bool = False, return_swapped: bool = False,
            **layer_kwargs):
    """Return `model` with each `nn.Linear` replaced by an `FALinear`.

    Weights and biases are kept; each new layer gets a fresh xavier-normal `b_matrix` (from
    `generator` when given, for reproducibility). `skip` names modules (qualified names, as in
    `named_modules()`) to leave as they are. Layers that are already FALinear are left alone.
    `layer_kwargs` are set as attributes understood by FALinear (e.g. feedback rule options).

    What was swapped is logged on the "soap_cuda" logger, printed when `verbose`, and returned
    as a list of qualified names when `return_swapped`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            qualified = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear or qualified in skip:
                continue
            layer = FALinear.from_linear(child, generator=generator, **layer_kwargs)
            setattr(module, child_name, layer)
            swapped.append(qualified)
            line = (f"soap_cuda.convert: {qualified}: nn.Linear({child.in_features}, "
                    f"{child.out_features}) -> FALinear")
            log.info(line)
            if verbose:
                print(line)
    if not swapped:
        log.warning("soap_cuda.convert: the model has no nn.Linear to swap")
    return (model, swapped) if return_swapped else model
