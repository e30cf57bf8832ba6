"""Feedback rules at the cost of a whole SGD train step, against nn.Linear backprop: the
784-1024-1024-1024-1024-10 MLP at batch 128. "fa" is the cost of FA itself; "kolen_pollack"
adds B's update (same gradient, one more optimizer tensor per layer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda

KINDS = ("nn.Linear", "fa", "kolen_pollack")


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


class RulesWorkload:
    """One set of initial weights for every variant; lr=0 keeps the arithmetic identical from
    step to step (and, for Kolen-Pollack, keeps B where it started)."""

    def __init__(self, shape: RulesShape, device, dtype=torch.float32):
        torch.manual_seed(0)
        base = _mlp(shape.dims, device, dtype)
        self.models = {"nn.Linear": base, "fa": soap_cuda.convert(base),
                       "kolen_pollack": soap_cuda.convert(base, feedback="kolen_pollack")}
        self.opts = {k: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
                     for k, m in self.models.items()}
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(shape.batch, shape.dims[0], generator=gen).to(device, dtype)
        self.y = torch.randint(0, shape.dims[-1], (shape.batch,), generator=gen).to(device)

    def step(self, kind: str):
        model, opt = self.models[kind], self.opts[kind]

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
        return run
