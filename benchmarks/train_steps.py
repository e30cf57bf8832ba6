"""One SGD train step (momentum 0.9) of several variants of the same model, on one batch.
lr = 0 keeps every variant's weights, hence its arithmetic, the same from step to step (no
drift, no denormals creeping in; a Kolen-Pollack B stays where it started)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


OPTIMIZER_ONLY = " optimizer"  # a kind "fa optimizer": fa's optimizer.step() alone


class TrainSteps:
    def __init__(self, models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor):
        self.models = models
        self.opts = {k: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
                     for k, m in models.items()}
        self.x, self.y = x, y

    def step(self, kind: str):
        if kind.endswith(OPTIMIZER_ONLY):
            return self.optimizer_step(kind[:-len(OPTIMIZER_ONLY)])
        model, opt = self.models[kind], self.opts[kind]

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
        return run


    def optimizer_step(self, kind: str):
        """Only the optimizer's update of `kind`'s parameters (their gradients from one whole
        step first; the variant's own steps keep them there)."""
        self.step(kind)()
        return self.opts[kind].step


def fixed_batch(batch: int, example_shape, classes: int, device, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *example_shape, generator=gen).to(device, dtype)
    return x, torch.randint(0, classes, (batch,), generator=gen).to(device)
