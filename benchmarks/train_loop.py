"""`soap-cuda train` against a hand-written PyTorch loop, side by side, on generated data of
Fashion-MNIST's size (60,000 training and 10,000 test examples of 784 features, 10 classes):
one epoch of a 784-1000-10 MLP at batch 64, plain SGD.

  python -m benchmarks.train_loop [--examples 60000] [--epochs 1] [--reps 3] [--threads N]

Rows: the hand-written loop (nn.Linear layers, no evaluation: the floor), `train()` with its
default evaluation, and `train()` with one evaluation at the start and one at the end. Each
is run `--reps` times, interleaved; the table gives the median wall time and the ratio to the
floor. What `train()` adds: the feedback rule's layers, the evaluations (losses, accuracies and
error-signal alignment on fixed subsets), the JSON-lines log and the checkpoints.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from soap_cuda.experiments.config import TrainConfig
from soap_cuda.experiments.data import Dataset
from soap_cuda.experiments.train import train


def generated_data(train_n: int, test_n: int, features: int = 784, classes: int = 10,
                   seed: int = 0) -> Dataset:
    """Gaussian classes around random means: learnable, standardised like the real loaders."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, features, generator=gen)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=gen)
        return means[y] * 0.3 + torch.randn(n, features, generator=gen), y
    x_train, y_train = draw(train_n)
    x_test, y_test = draw(test_n)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    return Dataset("generated", f"{train_n} generated examples", (x_train - mean) / std,
                   y_train, (x_test - mean) / std, y_test, classes)


def hand_written(data: Dataset, epochs: float, batch: int, lr: float) -> float:
    """The loop a user would write: no evaluation, no logging."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(data.in_features, 1000), nn.Tanh(), nn.Linear(1000, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = len(data.y_train)
    start = time.perf_counter()
    seen = 0
    epoch = 0
    while seen < epochs * n:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            seen += len(idx)
            if seen >= epochs * n:
                break
        epoch += 1
    return time.perf_counter() - start


def soap_train(data: Dataset, epochs: float, batch: int, lr: float, one_eval: bool) -> float:
    cfg = TrainConfig(rule="fa", lr=lr, epochs=epochs, batch_size=batch, hidden=[1000],
                      dataset="generated",
                      eval_every=10**12 if one_eval else None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, out_path=Path(tmp) / "metrics.jsonl",
              checkpoint_path=Path(tmp) / "checkpoint.pt", data=data)
        return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=60000)
    p.add_argument("--test-examples", type=int, default=10000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = generated_data(args.examples, args.test_examples)
    runs = {"hand-written loop, no evaluation": lambda: hand_written(
                data, args.epochs, args.batch, args.lr),
            "soap-cuda train, default evaluation": lambda: soap_train(
                data, args.epochs, args.batch, args.lr, one_eval=False),
            "soap-cuda train, first and last evaluation only": lambda: soap_train(
                data, args.epochs, args.batch, args.lr, one_eval=True)}
    times = {k: [] for k in runs}
    for _ in range(args.reps):  # interleaved, so drift hits every row alike
        for name, fn in runs.items():
            times[name].append(fn())
    floor = statistics.median(times["hand-written loop, no evaluation"])
    print(f"784-1000-10, {args.examples} examples x {args.epochs:g} epoch(s), batch "
          f"{args.batch}, torch threads {torch.get_num_threads()}, {args.reps} reps (median)\n")
    print("| run | seconds | vs hand-written |\n|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {med / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
