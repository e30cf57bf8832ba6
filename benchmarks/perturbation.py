"""Batched perturbation forward passes (`soap_cuda.perturb.perturbed_forward`: the clean pass and
K noisy passes as one pass of a K-tiled batch, the noise regenerated in the kernel) against the
Python loop of K + 1 passes with stored noise (`soap_cuda.reference.perturb_model`), with the
peak memory each call adds beside the size of K stored copies of the noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda
from soap_cuda.perturb import perturbed_forward
from soap_cuda.reference.perturb_model import perturbed_losses_loop

K_VALUES = (1, 8, 32, 64)
K_QUICK = (1, 32)
BATCHES = (64, 256)
DIMS = (784, 1000, 10)  # node perturbation of every layer of the MNIST MLP
SIGMA = 1e-2
KINDS = ("batched", "loop")


def _per_example_ce(output, target):
    return F.cross_entropy(output, target, reduction="none")


class PerturbWorkload:
    """K noisy forward passes of a 784-1000-10 FA MLP (noise on every layer's pre-activation),
    giving the [K + 1, batch] losses (row 0 clean) a node-perturbation estimate starts from."""

    def __init__(self, k: int, batch: int, device: str, dtype=torch.float32, dims=DIMS):
        torch.manual_seed(0)
        mods = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            mods += [nn.ReLU()] if i else []
            mods.append(soap_cuda.FALinear(a, b, device=device, dtype=dtype))
        self.model = nn.Sequential(*mods)
        self.linear = [(name, m) for name, m in self.model.named_modules()
                       if isinstance(m, soap_cuda.FALinear)]
        self.x = torch.randn(batch, dims[0], device=device, dtype=dtype)
        self.y = torch.randint(0, dims[-1], (batch,), device=device)
        self.k, self.batch = k, batch
        self.step = 0

    def batched(self):
        self.step += 1  # fresh noise streams each call, as in training
        return perturbed_forward(self.model, self.x, self.y, _per_example_ce, self.k, SIGMA,
                                 seed=1234, offset=self.step).all_losses

    def loop(self):
        noise = {name: torch.randn(self.k, self.batch, m.out_features, device=self.x.device,
                                   dtype=self.x.dtype) for name, m in self.linear}
        return perturbed_losses_loop(self.model, self.x, self.y, _per_example_ce, SIGMA, noise,
                                     self.k)

    def tiled_activation_bytes(self) -> int:
        """The largest layer output of the K-tiled batch: what any batched pass must hold."""
        return max((self.k + 1) * self.batch * m.out_features * self.x.element_size()
                   for _, m in self.linear)

    def noise_bytes(self) -> int:
        """K stored copies of the noise: what the batched pass must stay well below."""
        return sum(self.k * self.batch * m.out_features * self.x.element_size()
                   for _, m in self.linear)


def peak_extra_bytes(fn, device: str) -> int:
    """Peak memory a call adds over what was allocated before it. CUDA: the caching
    allocator's counters. CPU: an upper bound from the profiler's per-op memory, allocations
    counted at an op's start and frees at its end."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    changes = [(e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
                e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage]
    held = peak = 0
    for _, change in sorted(changes, key=lambda c: (c[0], -c[1])):
        held += change
        peak = max(peak, held)
    return peak
