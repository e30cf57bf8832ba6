"""One process, every comparison interleaved: prints Markdown tables, writes JSON.

  python -m benchmarks.report                 # the local device (CUDA if present, else CPU)
  python -m benchmarks.report --device cpu    # the CPU run (also: bash benchmarks/run.sh)
  python -m benchmarks.report --quick         # a ~30-second subset
  python -m benchmarks.report --device cuda --out gpu-results
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from . import (conv, graphed, layers, machine, markdown, perturbation, roofline, rules,
               runners, sync)
from .timing import pin_threads

SECTIONS = ("layers", "rules", "conv", "sync", "graphed", "perturb")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="a ~30 s subset (smallest shapes)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, 2 reps: checks the code runs")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated (default: float32 on CPU, float32,bfloat16 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all "
                   "cores this process may use)")
    p.add_argument("--out", default="results", help="folder for report-<device>.md and .json")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False on this machine")
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    args.sections = sections
    names = args.dtypes.split(",") if args.dtypes else (
        ["float32", "bfloat16"] if args.device == "cuda" else ["float32"])
    try:
        args.dtypes = [getattr(torch, n) for n in names]
        assert all(isinstance(d, torch.dtype) and d.is_floating_point for d in args.dtypes)
    except (AttributeError, AssertionError):
        p.error(f"--dtypes must name torch floating dtypes, got {names}")
    return args


def run(args) -> dict:
    device = args.device
    threads = pin_threads(args.threads)
    plan = runners.PLANS["tiny" if args.tiny else "quick" if args.quick else device]
    small = args.tiny or args.quick
    if args.tiny:
        shapes, models, ks, batches = [layers.TINY], [sync.TINY], (1, 2), (4,)
        conv_models, rule_shapes = [conv.TINY], [rules.TINY]
        step_models, sync_hosts = [graphed.TINY], [sync.TINY]
        pdims = (16, 32, 4)
    else:
        shapes = layers.SHAPES[:2] if args.quick else layers.SHAPES
        models = [m for m in sync.MODELS if device == "cuda" or not m.gpu_only]
        models = models[:1] if args.quick else models
        ks = perturbation.K_QUICK if args.quick else perturbation.K_VALUES
        batches = perturbation.BATCHES[:1] if args.quick else perturbation.BATCHES
        pdims = perturbation.DIMS
        conv_models = list(conv.MODELS[:1] if args.quick else conv.MODELS)
        rule_shapes = list(rules.SHAPES)
        step_models = [m for m in graphed.MODELS if device == "cuda" or not m.gpu_only]
        step_models = step_models[:1] if args.quick else step_models
        sync_hosts = list(graphed.SYNC_MODELS[:1] if args.quick else graphed.SYNC_MODELS)
    t0 = time.perf_counter()
    sizes = {"copy_bytes": 1 << 20, "matmul_n": 64} if args.tiny else None
    result = {"machine": machine.describe(device, threads),
              "roofline": roofline.measure(device, quick=small, sizes=sizes)}
    result["plan"] = vars(plan)
    if "layers" in args.sections:
        result["layers"] = runners.run_layers(device, args.dtypes, shapes, plan,
                                              result["roofline"])
    if "rules" in args.sections:
        result["rules"] = runners.run_rules(device, args.dtypes, rule_shapes, plan)
    if "conv" in args.sections:
        result["conv"] = runners.run_conv(device, args.dtypes, conv_models, plan)
    if "sync" in args.sections:
        result["sync"] = runners.run_sync(device, args.dtypes, models, plan, result["roofline"])
    if "graphed" in args.sections:
        result["graphed"] = runners.run_graphed(device, args.dtypes, step_models, sync_hosts,
                                                plan)
    if "perturb" in args.sections:
        result["perturb"] = runners.run_perturb(device, ks, batches, plan, dims=pdims)
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = markdown.report(result)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"report-{args.device}")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {stem}.md and {stem}.json ({result['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
