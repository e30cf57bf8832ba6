"""`soap-cuda train` against a hand-written PyTorch loop, both as whole processes (interpreter
start, imports, data decoding, training, evaluation, exit), interleaved, medians.

  python -m benchmarks.train_process [--repeats 3] [--epochs 1] [--data-dir DIR] [--out FILE.md]

Both read the same Fashion-MNIST IDX files (by default Debian's dataset-fashion-mnist) and train
784-1000-10 (tanh) with SGD at batch 64 for one epoch. The hand loop is what a user writes
without any library: gzip + numpy decoding, nn.Linear layers, a test-set evaluation at the end.
`soap-cuda train` runs its defaults (FA layers, evaluations 20 times an epoch with alignment at
every fourth, a checkpoint and metrics on disk). The target is at most 1.5x.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

HAND_LOOP = r'''
import gzip, sys, time
import numpy as np, torch
from torch import nn
root, epochs = sys.argv[1], float(sys.argv[2])
def read(name, offset):
    with gzip.open(f"{root}/{name}.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)
xtr = read("train-images-idx3-ubyte", 16).reshape(-1, 784).astype(np.float32) / 255
ytr = read("train-labels-idx1-ubyte", 8).astype(np.int64)
xte = read("t10k-images-idx3-ubyte", 16).reshape(-1, 784).astype(np.float32) / 255
yte = read("t10k-labels-idx1-ubyte", 8).astype(np.int64)
mean, std = xtr.mean(), xtr.std()
xtr, xte = torch.from_numpy((xtr - mean) / std), torch.from_numpy((xte - mean) / std)
ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 1000), nn.Tanh(), nn.Linear(1000, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
steps = int(epochs * len(ytr)) // 64
order = torch.randperm(len(ytr))
for i in range(steps):
    idx = order[i * 64:(i + 1) * 64]
    opt.zero_grad()
    nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
    opt.step()
with torch.no_grad():
    acc = (model(xte).argmax(1) == yte).float().mean().item()
print(f"test accuracy {acc:.4f}")
'''


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", default="1")
    p.add_argument("--data-dir", default=DEFAULT_DIR)
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    if not (Path(args.data_dir) / "train-images-idx3-ubyte.gz").is_file():
        print(f"train_process: no Fashion-MNIST in {args.data_dir} "
              f"(apt-get install dataset-fashion-mnist, or --data-dir)", file=sys.stderr)
        return 2
    times = {"soap-cuda train": [], "hand-written loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        loop = Path(tmp) / "hand_loop.py"
        loop.write_text(HAND_LOOP)
        for r in range(args.repeats):  # interleaved: drifts of the machine hit both alike
            out = Path(tmp) / f"run{r}"
            times["soap-cuda train"].append(_time(
                [sys.executable, "-m", "soap_cuda", "train", "--dataset", "fashion-mnist",
                 "--data-dir", args.data_dir, "--epochs", args.epochs, "--batch-size", "64",
                 "--no-progress", "--out", str(out)]))
            times["hand-written loop"].append(_time(
                [sys.executable, str(loop), args.data_dir, args.epochs]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["soap-cuda train"] / med["hand-written loop"]
    lines = [f"Whole processes, Fashion-MNIST 784-1000-10, batch 64, {args.epochs} epoch(s), "
             f"median of {args.repeats} interleaved runs:", "",
             "| process | median s | runs s |", "|---|---|---|"]
    lines += [f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |"
              for k, v in times.items()]
    lines += ["", f"ratio soap-cuda train / hand-written loop: **{ratio:.2f}x** (target <= 1.5x)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
