"""Batched perturbation forward passes (`soap_cuda.perturb.perturbed_forward`: the clean pass and
K noisy passes as one pass of a K-tiled batch, the noise regenerated in the kernel) against the
Python loop of K + 1 passes with stored noise (`soap_cuda.reference.perturb_model`).

Both come from the perturbation branch; without them `skip_reason()` says so and every caller
skips. When `benchmarks/perturb_bench.py` (that branch's file) defines
`report_rows(device, quick)`, the report uses its rows instead of these.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

K_VALUES = (1, 8, 32, 64)
K_QUICK = (1, 32)
BATCHES = (64, 256)
DIMS = (784, 1000, 10)  # node perturbation of every layer of the MNIST MLP
SIGMA = 1e-2
KINDS = ("batched", "loop")


def skip_reason() -> str | None:
    try:
        api = importlib.import_module("soap_cuda.perturb")
        ref = importlib.import_module("soap_cuda.reference.perturb_model")
    except ImportError as exc:
        return (f"soap_cuda.perturb is not in this checkout ({exc}); it lands from the "
                "perturbation branch: perturbation benchmarks skipped")
    missing = [n for n, m in (("perturbed_forward", api), ("perturbed_losses_loop", ref))
               if not hasattr(m, n)]
    if missing:
        return f"soap_cuda.perturb lacks {missing}: perturbation benchmarks skipped"
    return None


def delegate():
    """The perturbation branch's own report rows, if it provides them."""
    try:
        mod = importlib.import_module("benchmarks.perturb_bench")
    except ImportError:
        return None
    return getattr(mod, "report_rows", None)


def _per_example_ce(output, target):
    return F.cross_entropy(output, target, reduction="none")


class PerturbWorkload:
    """K noisy forward passes of a 784-1000-10 FA MLP (noise on every layer's pre-activation),
    giving the [K + 1, batch] losses (row 0 clean) a node-perturbation estimate starts from."""

    def __init__(self, k: int, batch: int, device: str, dtype=torch.float32, dims=DIMS):
        import soap_cuda
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
        from soap_cuda.perturb import perturbed_forward
        self.step += 1  # fresh noise streams each call, as in training
        return perturbed_forward(self.model, self.x, self.y, _per_example_ce, self.k, SIGMA,
                                 seed=1234, offset=self.step).all_losses

    def loop(self):
        from soap_cuda.reference.perturb_model import perturbed_losses_loop
        noise = {name: torch.randn(self.k, self.batch, m.out_features, device=self.x.device,
                                   dtype=self.x.dtype) for name, m in self.linear}
        return perturbed_losses_loop(self.model, self.x, self.y, _per_example_ce, SIGMA, noise,
                                     self.k)

    def noise_bytes(self) -> int:
        """K stored copies of the noise: what the batched pass must stay well below."""
        return sum(self.k * self.batch * m.out_features * self.x.element_size()
                   for _, m in self.linear)


def peak_extra_bytes(fn, device: str) -> int | None:
    """Peak device memory a call adds over what was allocated before it (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak
