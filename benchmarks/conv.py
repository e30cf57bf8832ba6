"""Conv models, one SGD train step, three ways: torch layers (backprop, the speed to match),
soap_cuda.convert(feedback="fa"), and convert(feedback="sign", sync_every=1000) (its sync
falls inside the timed steps, at its real rate)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import soap_cuda
from soap_cuda.experiments.conv_models import lenet5, resnet20

KINDS = ("torch", "fa", "sign")


@dataclass(frozen=True)
class ConvModel:
    name: str
    build: object
    input_shape: tuple  # one example
    batch: int
    heavy: bool = False


MODELS = (
    ConvModel("lenet5/b64", lenet5, (1, 32, 32), 64),
    ConvModel("resnet20/b128", resnet20, (3, 32, 32), 128, heavy=True),
)
TINY = ConvModel("lenet5/b4", lenet5, (1, 32, 32), 4)


class ConvWorkload:
    """The same initial weights in every variant; lr=0 keeps them (and so the arithmetic, no
    denormals creeping in) identical from step to step."""

    def __init__(self, spec: ConvModel, device, dtype=torch.float32):
        torch.manual_seed(0)
        base = spec.build().to(device=device, dtype=dtype)
        self.models = {"torch": base,
                       "fa": soap_cuda.convert(base),
                       "sign": soap_cuda.convert(base, feedback="sign", sync_every=1000)}
        self.opts = {k: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
                     for k, m in self.models.items()}
        gen = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(spec.batch, *spec.input_shape, generator=gen).to(device, dtype)
        self.y = torch.randint(0, 10, (spec.batch,), generator=gen).to(device)

    def step(self, kind: str):
        model, opt = self.models[kind], self.opts[kind]

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
        return run
