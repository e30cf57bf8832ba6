"""K perturbed forward passes: one batched pass (soap_cuda.perturb.perturbed_forward) against a
Python loop of K + 1 forward passes, time and peak memory.

    python benchmarks/perturb_bench.py [--device cpu|cuda] [--batch 64] [--widths 784,256,256,10]

Prints a Markdown table of medians and ratios. Importable: `measure(...)` returns the rows.
Peak memory: bytes held by torch allocations during one call, beyond those held before it
(CUDA: torch.cuda.max_memory_allocated; CPU: the profiler's allocation events replayed).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from soap_cuda import FALinear
from soap_cuda.perturb import perturbed_forward


def mse(out, target):
    return 0.5 * ((out - target) ** 2).sum(-1)


def make_model(widths, device, dtype=torch.float32):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(FALinear(a, b, device=device, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def loop_forward(model, x, y, loss_fn, num_perturb, sigma, generator):
    """The baseline: one clean pass, then K passes with torch.randn noise on every linear
    layer's output (pre-activation), one pass at a time."""
    def add_noise(module, args, out):
        return out + sigma * torch.randn(out.shape, generator=generator, device=out.device,
                                         dtype=out.dtype) if state["noisy"] else out

    state = {"noisy": False}
    handles = [m.register_forward_hook(add_noise) for m in model.modules()
               if isinstance(m, (nn.Linear, FALinear))]
    try:
        rows = [loss_fn(model(x), y).double()]
        state["noisy"] = True
        for _ in range(num_perturb):
            rows.append(loss_fn(model(x), y).double())
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows)


def _profiled_peak(fn) -> int:
    """Peak bytes held by torch CPU allocations during fn(): the profiler's allocation and
    free events (self memory of each op, frees as [memory] events), replayed in time order."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    held = peak = 0
    for e in events:
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


def _peak_bytes(fn, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _profiled_peak(fn)


def _time(fn, device, repeats):
    times = []
    fn()  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_bytes(fn, device)


def measure(ks=(1, 2, 4, 8, 16, 32, 64), batch=64, widths=(784, 256, 256, 10), repeats=5,
            device="cpu", sigma=1e-2):
    device = torch.device(device)
    torch.manual_seed(0)
    model = make_model(widths, device)
    x = torch.randn(batch, widths[0], device=device)
    y = torch.randn(batch, widths[-1], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for k in ks:
        t_batched, m_batched = _time(
            lambda: perturbed_forward(model, x, y, mse, k, sigma, seed=1), device, repeats)
        t_loop, m_loop = _time(lambda: loop_forward(model, x, y, mse, k, sigma, gen), device,
                               repeats)
        rows.append(dict(K=k, batched_ms=1e3 * t_batched, loop_ms=1e3 * t_loop,
                         speedup=t_loop / t_batched, batched_peak=m_batched, loop_peak=m_loop))
    return rows


def _mib(b):
    return f"{b / 2**20:.2f}"


def markdown(rows) -> str:
    lines = ["| K | batched (ms) | loop (ms) | loop / batched | batched peak (MiB) | "
             "loop peak (MiB) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['K']} | {r['batched_ms']:.2f} | {r['loop_ms']:.2f} | "
                     f"{r['speedup']:.2f} | {_mib(r['batched_peak'])} | {_mib(r['loop_peak'])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--widths", default="784,256,256,10")
    parser.add_argument("--ks", default="1,2,4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split(","))
    ks = tuple(int(k) for k in args.ks.split(","))
    import soap_cuda
    print(f"soap_cuda backend {soap_cuda.backend()}, device {args.device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; MLP {widths} (FALinear + "
          f"ReLU), batch {args.batch}, float32, node noise on every layer; median of "
          f"{args.repeats}\n")
    print(markdown(measure(ks, args.batch, widths, args.repeats, args.device)))


if __name__ == "__main__":
    main()
