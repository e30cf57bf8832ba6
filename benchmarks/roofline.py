"""The machine's two ceilings, measured in the same run as the kernels they judge:
copy bandwidth (bytes read + written by a large tensor copy) and matmul rate (a large GEMM)."""
from __future__ import annotations

import torch

from .timing import Variant, interleave

# GPU: a copy well over the 50-60 MB L2 (>1 GiB, so the figure is HBM's) and a GEMM that fills
# the chip. CPU: sized to take well under a second per run on a few cores.
SIZES = {
    "cuda": {"copy_bytes": 3 << 29, "matmul_n": 8192, "dtypes": (torch.float32, torch.bfloat16)},
    "cpu": {"copy_bytes": 1 << 28, "matmul_n": 2048, "dtypes": (torch.float32,)},
}
QUICK = {"copy_bytes": 1 << 26, "matmul_n": 1024}


def copy_bandwidth(device: str, nbytes: int, reps: int = 20) -> dict:
    n = nbytes // 4
    src = torch.randn(n, device=device)  # random, never zeros
    dst = torch.empty_like(src)
    t = interleave([Variant("copy", lambda: dst.copy_(src))], device, reps)["copy"]
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    return {"bytes_moved": moved, "median_s": t.median_s, "GBps": moved / t.median_s / 1e9,
            "reps": len(t.times_s)}


def matmul_rate(device: str, n: int, dtype: torch.dtype, reps: int = 10) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = interleave([Variant("mm", lambda: torch.mm(a, b))], device, reps)["mm"]
    flops = 2 * n ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": t.median_s,
            "TFLOPs": flops / t.median_s / 1e12, "reps": len(t.times_s)}


def measure(device: str, quick: bool = False, sizes: dict | None = None) -> dict:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    sizes = {**SIZES[kind], **(QUICK if quick else {}), **(sizes or {})}
    reps = 3 if quick else (20 if kind == "cuda" else 5)
    out = {"copy": copy_bandwidth(device, sizes["copy_bytes"], reps), "matmul": {}}
    for dtype in sizes["dtypes"]:
        r = matmul_rate(device, sizes["matmul_n"], dtype, reps)
        out["matmul"][r["dtype"]] = r
    if kind == "cuda":  # float32 GEMMs run in TF32 only when allowed: say which was measured
        out["tf32_matmul_allowed"] = bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False))
    return out
