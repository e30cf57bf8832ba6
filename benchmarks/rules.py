"""Feedback rules at the cost of a whole SGD train step, against nn.Linear backprop: the
784-1024-1024-1024-1024-10 MLP at batch 128. "fa" is the cost of FA itself; "kolen_pollack"
adds B's update (same gradient, one more optimizer tensor per layer); "dfa" needs no
layer-to-layer error: one GEMM per layer in the backward (weight gradient) where backprop does
two, plus one small GEMM of the output error against every B."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import soap_cuda

from .train_steps import OPTIMIZER_ONLY, TrainSteps, fixed_batch

# "fa optimizer" times the FA step's optimizer update alone: a Kolen-Pollack B, a parameter of
# the same optimizer with W's gradient (shared copy-on-write), costs at least one more of it
KINDS = ("nn.Linear", "fa", "kolen_pollack", "dfa", "fa" + OPTIMIZER_ONLY)


@dataclass(frozen=True)
class RulesShape:
    name: str
    dims: tuple
    batch: int


SHAPES = (RulesShape("mlp784-1024x4-10/b128", (784, 1024, 1024, 1024, 1024, 10), 128),)
TINY = RulesShape("mlp16-32-4/b8", (16, 32, 4), 8)


def _mlp(dims, device, dtype):
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            mods.append(nn.ReLU())
        mods.append(nn.Linear(a, b, device=device, dtype=dtype))
    return nn.Sequential(*mods)


def workload(shape: RulesShape, device, dtype=torch.float32) -> TrainSteps:
    torch.manual_seed(0)
    base = _mlp(shape.dims, device, dtype)
    models = {"nn.Linear": base, "fa": soap_cuda.convert(base),
              "kolen_pollack": soap_cuda.convert(base, feedback="kolen_pollack"),
              "dfa": soap_cuda.convert(base, feedback="dfa")}
    return TrainSteps(models, *fixed_batch(shape.batch, shape.dims[:1], shape.dims[-1], device,
                                           dtype))
