"""How precisely a float32 SOAP step measures its curvature c_d (a second difference of losses
over a shift of h / ||d||), against the same step computed in float64: SOAP's two ways of
measuring the three losses, float32 closure means and the batched pass of per-example float64
sums that `soap-cuda train` uses. Not a speed benchmark: the relative error of c_d, median and
worst over batches, on the default sweep's model at its initialisation.

  python -m benchmarks.soap_precision [--batches 20] [--hidden 128] [--h 1e-3]
"""
from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys

import torch
import torch.nn.functional as F

from soap_cuda.experiments.data import load_dataset
from soap_cuda.experiments.models import build_mlp
from soap_cuda.optim import SOAP

PER_EXAMPLE = functools.partial(F.cross_entropy, reduction="none")


def curvature(model, x, y, h: float, batched: bool) -> float:
    """c_d of one SOAP step from `model` (a copy is stepped) on the batch (x, y)."""
    m = copy.deepcopy(model)
    opt = SOAP(m.parameters(), model=m, loss_fn=PER_EXAMPLE, h=h, measure_actual=False)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        return loss
    if batched:
        opt.step(closure, x, y)
    else:
        opt.step(closure)
    return opt.history[-1]["c_d"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--h", type=float, default=1e-3)
    args = p.parse_args(argv)
    data = load_dataset("mnist5k")
    torch.manual_seed(0)
    model = build_mlp(data.in_features, [args.hidden], data.num_classes, "soap", None, "tanh",
                      "cpu")
    model64 = copy.deepcopy(model).double()
    errors = {"float32 closure means": [], "float64 sums of float32 losses (train)": []}
    for b in range(args.batches):
        rows = slice(b * args.batch_size, (b + 1) * args.batch_size)
        x, y = data.x_train[rows], data.y_train[rows]
        truth = curvature(model64, x.double(), y, args.h, batched=True)
        for (name, values), batched in zip(errors.items(), (False, True)):
            values.append(abs(curvature(model, x, y, args.h, batched) - truth) / abs(truth))
    print(f"SOAP c_d in float32 against float64, 784-{args.hidden}-10 at initialisation, "
          f"{args.batches} batches of {args.batch_size}, h = {args.h:g}\n")
    print("| losses measured as | median relative error | worst |")
    print("|---|---|---|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.median(values):.3g} | {max(values):.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
