"""Where the fused layer's host time goes at a shape with almost no arithmetic: each call path
from nn.Linear down to the raw op, forward with grad enabled, and forward + backward.

  python -m benchmarks.overhead [--device cpu|cuda] [--reps N]

The differences between rows are the cost of one layer of Python or dispatch; on a GPU these
set the floor of small-shape steps, where the kernels take microseconds.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda

from .timing import Variant, interleave, pin_threads


def paths(device: str, n_in=16, n_out=32, batch=8):
    torch.manual_seed(0)
    lin = nn.Linear(n_in, n_out, device=device)
    fa = soap_cuda.FALinear(n_in, n_out, device=device)
    x = torch.randn(batch, n_in, device=device)
    w, b, bm = fa.weight, fa.bias, fa.b_matrix
    op = torch.ops.soap_cuda.fa_linear
    return {
        "nn.Linear module": lambda: lin(x),
        "F.linear": lambda: F.linear(x, lin.weight, lin.bias),
        "torch.ops...fa_linear.default": lambda: op.default(x, w, b, bm),
        "torch.ops...fa_linear": lambda: op(x, w, b, bm),
        "soap_cuda.fa_linear": lambda: soap_cuda.fa_linear(x, w, b, bm),
        "FALinear module": lambda: fa(x),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False on this machine")
    threads = pin_threads(args.threads)
    fns = paths(args.device)
    fwd = interleave([Variant(k, f) for k, f in fns.items()], args.device, args.reps, 50)
    both = interleave([Variant(k, lambda f=f: f().sum().backward()) for k, f in fns.items()],
                      args.device, args.reps, 50)
    base_f, base_b = fwd["F.linear"].median_s, both["F.linear"].median_s
    print(f"device {args.device}, torch threads {threads}, soap_cuda backend "
          f"{soap_cuda.backend()}, {args.reps} reps, medians; 16 -> 32 features, batch 8\n")
    print("| call path | forward us | vs F.linear | forward + backward us | vs F.linear |")
    print("|---|---|---|---|---|")
    for k in fns:
        f, b = fwd[k].median_s, both[k].median_s
        print(f"| {k} | {f * 1e6:.1f} | {(f - base_f) * 1e6:+.1f} | {b * 1e6:.1f} | "
              f"{(b - base_b) * 1e6:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
