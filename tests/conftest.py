"""Shared test set-up: report which backend runs, and give CUDA tests a clear skip reason."""
import os
import random
import zlib

import pytest
import torch

import soap_cuda

HAS_CUDA = torch.cuda.is_available()
CUDA_SKIP_REASON = (
    "no CUDA device on this machine (torch.cuda.is_available() is False); the CUDA kernels "
    f"were {'built' if soap_cuda.backend() == 'cuda' else 'not built'} "
    f"(soap_cuda backend: {soap_cuda.backend()})")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)

# Inputs are fresh each run; SOAP_CUDA_TEST_SEED=<n> replays a run (the header prints n).
RUN_SEED = int(os.environ.get("SOAP_CUDA_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    line = f"soap_cuda backend: {soap_cuda.backend()}"
    if soap_cuda.backend() == "python":
        line += f" (fallback: {soap_cuda.fallback_reason})"
    cuda = (f"CUDA device: {torch.cuda.get_device_name()}" if HAS_CUDA else
            "CUDA device: none, CUDA tests skip")
    return [line, f"torch {torch.__version__} (CUDA build {torch.version.cuda}); {cuda}; "
                  f"SOAP_CUDA_BACKEND={os.environ.get('SOAP_CUDA_BACKEND', 'auto')}",
            f"SOAP_CUDA_TEST_SEED={RUN_SEED}"]


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Each test draws from its own seed: the run seed mixed with the test's id."""
    torch.manual_seed(RUN_SEED ^ zlib.crc32(request.node.nodeid.encode()))
    yield


def devices():
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])
