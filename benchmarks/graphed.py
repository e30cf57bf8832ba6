"""Whole train steps, eager against graphed (`soap_cuda.graphed_step`), for the small models
whose steps are bound by host work: torch layers (backprop, the speed to match) and soap_cuda
with fa, sign (sync every 1,000 examples, inside the timed steps at its real rate) and DFA.
"graphed" is a CUDA graph replay on CUDA and torch.compile(fullgraph=True) of the step on the
CPU; the torch layers go through the same graphed_step (it has no schedule to drive there).
Also the host cost of one `sync_feedback` call, against the per-layer torch expression."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda
from soap_cuda.experiments.conv_models import lenet5, resnet20

from . import sync
from .timing import synchronize
from .train_steps import fixed_batch

RULES = ("nn", "fa", "sign", "dfa")
KINDS = tuple(f"{rule} {mode}" for rule in RULES for mode in ("eager", "graphed"))


@dataclass(frozen=True)
class StepModel:
    name: str
    build: object
    input_shape: tuple  # one example
    batch: int
    gpu_only: bool = False  # a CPU step of it takes too long to time (and compile) here


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10))


def _tiny():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


MODELS = (
    StepModel("mlp784-1000-10/b64", _mlp, (784,), 64),
    StepModel("lenet5/b64", lenet5, (1, 32, 32), 64),
    StepModel("resnet20/b128", resnet20, (3, 32, 32), 128, gpu_only=True),
)
TINY = StepModel("mlp16-32-10/b8", _tiny, (16,), 8)
SYNC_MODELS = (sync.SyncModel("mlp784-1000-10", (784, 1000, 10)),   # 0.8M parameters
               sync.SyncModel("mlp4x2048", (2048,) * 5))              # 16.8M


class GraphedSteps:
    """One model per rule, each with an eager loop and a graphed step of its own copy (lr = 0:
    every step does the same arithmetic)."""

    def __init__(self, spec: StepModel, device, dtype):
        torch.manual_seed(0)
        base = spec.build().to(device=device, dtype=dtype)
        self.x, self.y = fixed_batch(spec.batch, spec.input_shape, 10, device, dtype)
        self.runs = {}
        for rule in RULES:
            for mode in ("eager", "graphed"):
                model = self._model(base, rule)
                opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
                if mode == "eager":
                    self.runs[f"{rule} {mode}"] = self._eager(model, opt)
                else:
                    step = soap_cuda.graphed_step(model, F.cross_entropy, opt, (self.x, self.y),
                                                  compile=not self.x.is_cuda)
                    for _ in range(2 + step.warmup):  # record, warm up, capture (or compile)
                        step(self.x, self.y)
                    self.runs[f"{rule} {mode}"] = lambda step=step: step(self.x, self.y)

    def _model(self, base, rule):
        import copy
        if rule == "nn":
            return copy.deepcopy(base)
        if rule == "sign":
            return soap_cuda.convert(base, feedback="sign", sync_every=1000)
        if rule == "dfa":
            return soap_cuda.convert(base, feedback="dfa", example_input=self.x[:2])
        return soap_cuda.convert(base, feedback=rule)

    def _eager(self, model, opt):
        def run():
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    def step(self, kind: str):
        return self.runs[kind]


def workload(spec: StepModel, device, dtype=torch.float32) -> GraphedSteps:
    return GraphedSteps(spec, device, dtype)


def sync_host_cost(spec: sync.SyncModel, device, dtype, reps: int) -> dict:
    """Median host time (us) of one sync_feedback call and of the per-layer torch expression,
    interleaved; on CUDA the device work is waited for outside the timed call."""
    torch.manual_seed(0)
    model = sync.make_model(spec.dims, "sign", device, dtype)
    kinds = {"fused": lambda: soap_cuda.sync_feedback(model),
             "per-layer": lambda: sync.per_layer_sync(model)}
    times = {k: [] for k in kinds}
    for rep in range(reps + 2):
        for name, fn in kinds.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            if rep >= 2:
                times[name].append(elapsed * 1e6)
    synchronize(device)
    us = {k: statistics.median(v) for k, v in times.items()}
    return {"model": spec.name, "parameters": sync.parameters(model), "host_us": us,
            "fused_over_per_layer": us["fused"] / us["per-layer"], "reps": reps}
