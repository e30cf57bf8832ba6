"""Interleaved timing of several variants of the same work, CPU or CUDA.

Variants run in turn inside every repetition (order rotated each time), so slow drift of a
shared machine hits them all alike; we keep medians. On CUDA each run is bracketed by events
and synchronised; on CPU by time.perf_counter.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def cpu_threads() -> int:
    """The cores this process may use (affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pin_threads(n: int | None = None) -> int:
    n = n or cpu_threads()
    torch.set_num_threads(n)
    return n


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Variant:
    """`run` is timed; `setup` (optional, untimed) runs just before it every time."""
    name: str
    run: Callable[[], object]
    setup: Callable[[], object] | None = None


@dataclass
class Timing:
    name: str
    times_s: list = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr_s(self) -> float:
        if len(self.times_s) < 4:
            return max(self.times_s) - min(self.times_s)
        q = statistics.quantiles(self.times_s, n=4)
        return q[2] - q[0]


def _time_once(variant: Variant, device: str) -> float:
    if variant.setup is not None:
        variant.setup()
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()  # setup's work must not land inside the timed region
        start.record()
        variant.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    variant.run()
    return time.perf_counter() - t0


def interleave(variants: list[Variant], device: str, reps: int, warmup: int = 2,
               max_seconds: float | None = None) -> dict[str, Timing]:
    """Median-ready timings of each variant; stops early (after >= 3 reps) past max_seconds."""
    for _ in range(warmup):
        for v in variants:
            _time_once(v, device)
    out = {v.name: Timing(v.name) for v in variants}
    began = time.perf_counter()
    for rep in range(reps):
        shift = rep % len(variants)
        for v in variants[shift:] + variants[:shift]:
            out[v.name].times_s.append(_time_once(v, device))
        if max_seconds is not None and rep >= 2 and time.perf_counter() - began > max_seconds:
            break
    return out
