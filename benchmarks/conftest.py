"""pytest-benchmark suites: `pytest benchmarks/ --benchmark-only`. Not unit tests (the normal
run collects tests/ only) and nothing here asserts on speed."""
import pytest
import torch

from .timing import pin_threads, synchronize

THREADS = pin_threads()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}


def pytest_report_header(config):
    import soap_cuda
    return [f"benchmarks: torch threads {THREADS}, devices {DEVICES}, "
            f"soap_cuda backend {soap_cuda.backend()}"]


def device_dtype_params():
    return [pytest.param(d, t, id=f"{d}-{str(t).replace('torch.', '')}")
            for d in DEVICES for t in DTYPES[d]]


def timed(benchmark, run, device, setup=None, rounds=20, warmup=2):
    """benchmark.pedantic with the device synchronised inside the timed call (pytest-benchmark
    reads a host clock) and after the untimed setup."""
    def call():
        run()
        synchronize(device)

    def prepare():
        if setup is not None:
            setup()
        synchronize(device)

    return benchmark.pedantic(call, setup=prepare, rounds=rounds, iterations=1,
                              warmup_rounds=warmup)
