#!/usr/bin/env bash
# Install everything, then compare one SGD train step of a 784-1000-10 MLP: nn.Linear (backprop),
# the fused FALinear, and the seed's Python FALinear, interleaved, medians of 300 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python - <<'PY'
import statistics, time
import torch
from torch import nn
import soap_cuda
from soap_cuda.reference import SeedFALinear

torch.manual_seed(0)
kinds = {"nn.Linear": nn.Linear, "FALinear (fused)": soap_cuda.FALinear, "seed FALinear (Python)": SeedFALinear}
models = {k: nn.Sequential(L(784, 1000), nn.ReLU(), L(1000, 10)) for k, L in kinds.items()}
opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
times = {k: [] for k in models}
for rep in range(320):
    for k, m in models.items():
        t = time.perf_counter()
        opts[k].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()
        opts[k].step()
        if rep >= 20:
            times[k].append(time.perf_counter() - t)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
print(f"soap_cuda backend: {soap_cuda.backend()}; torch threads: {torch.get_num_threads()}")
print("| layer | median train step (ms) |\n|---|---|")
for k, v in med.items():
    print(f"| {k} | {v:.3f} |")
print(f"fused / nn.Linear = {med['FALinear (fused)'] / med['nn.Linear']:.3f}; "
      f"Python / fused = {med['seed FALinear (Python)'] / med['FALinear (fused)']:.3f}")
PY
