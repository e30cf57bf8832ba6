"""Conv models, one SGD train step, three ways: torch layers (backprop, the speed to match),
soap_cuda.convert(feedback="fa"), and convert(feedback="sign", sync_every=1000) (its sync
falls inside the timed steps, at its real rate)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import soap_cuda
from soap_cuda.experiments.conv_models import lenet5, resnet20

from .train_steps import TrainSteps, fixed_batch

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


def workload(spec: ConvModel, device, dtype=torch.float32) -> TrainSteps:
    torch.manual_seed(0)
    base = spec.build().to(device=device, dtype=dtype)
    models = {"torch": base, "fa": soap_cuda.convert(base),
              "sign": soap_cuda.convert(base, feedback="sign", sync_every=1000)}
    return TrainSteps(models, *fixed_batch(spec.batch, spec.input_shape, 10, device, dtype))
