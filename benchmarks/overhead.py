"""Where an FA layer's host time goes at shapes with almost no arithmetic: each call path from
the torch module down to the raw op, for a linear layer (16 -> 32 features, batch 8) and a 1x1
conv (4 -> 8 channels, 4x4, batch 8), forward with grad enabled and forward + backward, in
float32 and under autocast (bfloat16 on CPU, float16 on CUDA; each call its own autocast
region, as a training step has, so casts cached inside a region are redone every call).

  python -m benchmarks.overhead [--device cpu|cuda] [--reps N] [--threads N]
                                [--kinds linear,conv] [--precisions float32,autocast]

The differences between rows are the cost of one layer of Python or dispatch; on a GPU these
set the floor of small-shape steps, where the kernels take microseconds. Every table ends with
the FA module against the torch module: the target is 1.05x or 2 us, whichever is larger.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda

from .timing import Variant, interleave, pin_threads

KINDS = ("linear", "conv")
PRECISIONS = ("float32", "autocast")
TARGET_RATIO, TARGET_US = 1.05, 2.0


def linear_paths(device: str, n_in=16, n_out=32, batch=8) -> dict:
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


def conv_paths(device: str, c_in=4, c_out=8, size=4, batch=8) -> dict:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 1, device=device)
    fa = soap_cuda.FAConv2d(c_in, c_out, 1, device=device)
    x = torch.randn(batch, c_in, size, size, device=device)
    w, b, bm = fa.weight, fa.bias, fa.b_matrix
    op = torch.ops.soap_cuda.fa_conv.default
    geometry = ([1, 1], [0, 0], [1, 1], 1)
    return {
        "nn.Conv2d module": lambda: conv(x),
        "F.conv2d": lambda: F.conv2d(x, conv.weight, conv.bias),
        "torch.ops...fa_conv.default": lambda: op(x, w, b, bm, *geometry),
        "soap_cuda.fa_conv": lambda: soap_cuda.fa_conv(x, w, b, bm, *geometry),
        "FAConv2d module": lambda: fa(x),
    }


def autocast_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cpu" else torch.float16


def region(device: str, precision: str):
    """A fresh autocast region per call (or none): what each training step enters."""
    if precision == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device, dtype=autocast_dtype(device))


def measure(fns: dict, device: str, precision: str, reps: int):
    """(forward, forward + backward) timings of every call path, interleaved."""
    enter = region(device, precision)

    def forward(f):
        with enter():
            return f()

    def both(f):
        with enter():
            loss = f().float().sum()
        loss.backward()

    fwd = interleave([Variant(k, lambda f=f: forward(f)) for k, f in fns.items()], device,
                     reps, 50)
    fb = interleave([Variant(k, lambda f=f: both(f)) for k, f in fns.items()], device, reps, 50)
    return fwd, fb


def table(fns: dict, fwd, fb) -> list[str]:
    names = list(fns)
    torch_module, functional, fa_module = names[0], names[1], names[-1]
    base_f, base_b = fwd[functional].median_s, fb[functional].median_s
    lines = [f"| call path | forward us | vs {functional} | forward + backward us | "
             f"vs {functional} |", "|---|---|---|---|---|"]
    for k in names:
        f, b = fwd[k].median_s, fb[k].median_s
        lines.append(f"| {k} | {f * 1e6:.1f} | {(f - base_f) * 1e6:+.1f} | {b * 1e6:.1f} | "
                     f"{(b - base_b) * 1e6:+.1f} |")
    verdicts = []
    for phase, t in (("forward", fwd), ("forward + backward", fb)):
        fa, ref = t[fa_module].median_s, t[torch_module].median_s
        ok = fa <= max(TARGET_RATIO * ref, ref + TARGET_US * 1e-6)
        verdicts.append(f"{phase} {fa / ref:.3f}x ({(fa - ref) * 1e6:+.1f} us, "
                        f"{'met' if ok else 'missed'})")
    lines.append(f"\n{fa_module} / {torch_module}: " + "; ".join(verdicts) + ".")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False on this machine")
    kinds, precisions = args.kinds.split(","), args.precisions.split(",")
    for value, allowed in ((kinds, KINDS), (precisions, PRECISIONS)):
        if not set(value) <= set(allowed):
            p.error(f"choose from {allowed}, got {value}")
    threads = pin_threads(args.threads)
    print(f"device {args.device}, torch threads {threads}, soap_cuda backend "
          f"{soap_cuda.backend()}, {args.reps} reps, medians, interleaved. Target for the FA "
          f"module against the torch module: {TARGET_RATIO}x or {TARGET_US:.0f} us, whichever "
          "is larger.")
    shapes = {"linear": ("16 -> 32 features, batch 8", linear_paths),
              "conv": ("1x1 conv, 4 -> 8 channels, 4x4, batch 8", conv_paths)}
    for kind in kinds:
        what, make = shapes[kind]
        for precision in precisions:
            label = precision if precision == "float32" else \
                f"autocast {str(autocast_dtype(args.device)).replace('torch.', '')}"
            fns = make(args.device)
            fwd, fb = measure(fns, args.device, precision, args.reps)
            print(f"\n### {kind}: {what}, {label}\n")
            print("\n".join(table(fns, fwd, fb)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
