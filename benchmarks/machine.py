"""What the figures came from: device, torch, soap_cuda backend, threads."""
from __future__ import annotations

import datetime
import platform
import sys

import torch

import soap_cuda


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str, threads: int) -> dict:
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "-m", "benchmarks.report",
                             *sys.argv[1:]]),
        "device": device,
        "cpu": cpu_model(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "soap_cuda_backend": soap_cuda.backend(),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=p.name, gpu_sms=p.multi_processor_count,
                    gpu_memory_GiB=round(p.total_memory / 2**30, 1))
    return info
