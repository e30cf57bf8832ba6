"""The same MLP built from three layer types, and its forward, backward and SGD train step.

  fused      soap_cuda.FALinear (native op, C++ autograd, only the gradients autograd needs)
  python     the seed's FALinear (Python autograd.Function, every gradient always)
  nn.Linear  plain backprop: the speed to match
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda
from soap_cuda.reference.seed import SeedFALinear

KINDS = ("fused", "python", "nn.Linear")
PHASES = ("forward", "backward", "train_step")


@dataclass(frozen=True)
class Shape:
    name: str
    dims: tuple  # layer widths, input first: (784, 1000, 10) is 784-1000-10 with ReLU between
    batch: int
    heavy: bool = False  # minutes on a small CPU: fewer repetitions there
    overhead: bool = False  # measures host cost per call, not one of the target shapes


SHAPES = (
    # Almost no arithmetic: the per-call host cost (Python, dispatcher, autograd) that decides
    # small shapes on a GPU, where the kernels take microseconds.
    Shape("overhead16-32-4/b8", (16, 32, 4), 8, overhead=True),
    Shape("mlp784-1000-10/b64", (784, 1000, 10), 64),
    Shape("mlp784-1000-10/b256", (784, 1000, 10), 256),
    Shape("linear4096x4096/b1024", (4096, 4096), 1024, heavy=True),
)
TINY = Shape("tiny16-32-4/b8", (16, 32, 4), 8)  # the smoke test's


def make_layer(kind: str, n_in: int, n_out: int, device, dtype) -> nn.Module:
    if kind == "fused":
        return soap_cuda.FALinear(n_in, n_out, device=device, dtype=dtype)
    if kind == "python":
        return SeedFALinear(n_in, n_out, device=device, dtype=dtype)
    if kind == "nn.Linear":
        return nn.Linear(n_in, n_out, device=device, dtype=dtype)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def make_mlp(kind: str, dims, device, dtype) -> nn.Sequential:
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            mods.append(nn.ReLU())
        mods.append(make_layer(kind, a, b, device, dtype))
    return nn.Sequential(*mods)


def flops(shape: Shape, phase: str) -> int:
    """The GEMM work every variant must do: forward y = xW^T; backward grad_W for every layer
    and grad_x for all but the first (the input needs no gradient; the seed computes it anyway,
    which is part of the overhead it pays)."""
    pairs = list(zip(shape.dims[:-1], shape.dims[1:]))
    fwd = sum(2 * shape.batch * a * b for a, b in pairs)
    bwd = fwd + sum(2 * shape.batch * a * b for a, b in pairs[1:])
    return {"forward": fwd, "backward": bwd, "train_step": fwd + bwd}[phase]


class Workload:
    """One model of one kind, with its data and optimizer; `callables(phase)` gives
    (setup, run) for the timing loop."""

    def __init__(self, kind: str, shape: Shape, device: str, dtype: torch.dtype, seed: int = 0):
        torch.manual_seed(seed)
        self.model = make_mlp(kind, shape.dims, device, dtype)
        self.x = torch.randn(shape.batch, shape.dims[0], device=device, dtype=dtype)
        self.y = torch.randint(0, shape.dims[-1], (shape.batch,), device=device)
        # A small rate keeps hundreds of repeated steps finite; speed does not depend on it.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.loss = None

    def _loss(self):
        return F.cross_entropy(self.model(self.x), self.y)

    def forward(self):
        return self.model(self.x)

    def prepare_backward(self):
        self.opt.zero_grad(set_to_none=True)
        self.loss = self._loss()

    def backward(self):
        self.loss.backward()
        self.loss = None

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        self._loss().backward()
        self.opt.step()

    def callables(self, phase: str):
        if phase == "forward":
            return None, self.forward
        if phase == "backward":
            return self.prepare_backward, self.backward
        if phase == "train_step":
            return None, self.train_step
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
