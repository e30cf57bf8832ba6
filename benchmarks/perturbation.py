"""Batched perturbation forward passes (K noisy copies of a batch in one pass, noise regenerated
in the kernel) against a Python loop of K noisy passes with stored noise.

Needs `soap_cuda.perturb`, which lands from the perturbation branch; without it `skip_reason()`
says so and every caller skips. When `benchmarks/perturb_bench.py` (that branch's file) defines
`report_rows(device, quick)`, the report uses its rows instead of these.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

K_VALUES = (1, 8, 32, 64)
K_QUICK = (1, 32)
BATCHES = (64, 256)
DIMS = (784, 1000, 10)  # node perturbation of the hidden layer of the MNIST MLP
SIGMA = 1e-2
KINDS = ("batched", "loop")


def skip_reason() -> str | None:
    try:
        importlib.import_module("soap_cuda.perturb")
    except ImportError as exc:
        return (f"soap_cuda.perturb is not in this checkout ({exc}); it lands from the "
                "perturbation branch: perturbation benchmarks skipped")
    if not hasattr(torch.ops.soap_cuda, "perturbed_bias_act"):
        return "torch.ops.soap_cuda.perturbed_bias_act is missing: perturbation benchmarks skipped"
    return None


def delegate():
    """The perturbation branch's own report rows, if it provides them."""
    try:
        mod = importlib.import_module("benchmarks.perturb_bench")
    except ImportError:
        return None
    return getattr(mod, "report_rows", None)


class PerturbWorkload:
    """K noisy forward passes of a 784-1000-10 MLP (noise on the hidden pre-activation), giving
    the [K + 1, batch] losses (row 0 clean) a node-perturbation estimate starts from."""

    def __init__(self, k: int, batch: int, device: str, dtype=torch.float32, dims=DIMS):
        g = torch.Generator(device="cpu").manual_seed(0)
        d0, d1, d2 = dims
        mk = lambda *s: (torch.randn(*s, generator=g) / s[-1] ** 0.5).to(device, dtype)  # noqa
        self.w1, self.b1, self.w2, self.b2 = mk(d1, d0), mk(d1), mk(d2, d1), mk(d2)
        self.x = torch.randn(batch, d0, generator=g).to(device, dtype)
        self.y = torch.randint(0, d2, (batch,), generator=g).to(device)
        self.k, self.batch, self.width = k, batch, d1
        self.offset = 0

    def _losses(self, h):
        out = F.linear(h, self.w2, self.b2)
        return F.cross_entropy(out, self.y.repeat(h.shape[0] // self.batch), reduction="none")

    @torch.no_grad()
    def batched(self):
        pre = F.linear(self.x, self.w1).repeat(self.k + 1, 1)  # the input is shared by all passes
        self.offset += 1  # a fresh noise stream per call, as in training
        h = torch.ops.soap_cuda.perturbed_bias_act(pre, self.b1, SIGMA, 1234, self.offset,
                                                   self.k, False, "relu")
        return self._losses(h).view(self.k + 1, self.batch)

    @torch.no_grad()
    def loop(self):
        losses = [self._losses(torch.relu(F.linear(self.x, self.w1, self.b1)))]
        for _ in range(self.k):
            noise = torch.randn(self.batch, self.width, device=self.x.device, dtype=self.x.dtype)
            h = torch.relu(F.linear(self.x, self.w1, self.b1) + SIGMA * noise)
            losses.append(self._losses(h))
        return torch.stack(losses)

    def noise_bytes(self) -> int:
        """K stored copies of the noise: what the batched pass must stay well below."""
        return self.k * self.batch * self.width * self.x.element_size()


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
