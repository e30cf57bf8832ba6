"""Shared test set-up: report which backend runs, and give CUDA tests a clear skip reason."""
import os
import random
import sys
import zlib
from pathlib import Path

import tempfile

import pytest
import torch

import soap_cuda

HAS_CUDA = torch.cuda.is_available()
CUDA_SKIP_REASON = (
    "no CUDA device on this machine (torch.cuda.is_available() is False); the CUDA kernels "
    f"were {'built' if soap_cuda.backend() == 'cuda' else 'not built'} "
    f"(soap_cuda backend: {soap_cuda.backend()})")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)

# The repository around tests/, when the suite runs from a checkout; a suite copied beside an
# installed wheel (scripts/test_wheel.sh) has none, and skips what needs it.
REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_SOURCE_TREE = (REPO_ROOT / "setup.py").is_file() and (REPO_ROOT / "benchmarks").is_dir()
SOURCE_TREE_SKIP_REASON = "needs the source tree (README, benchmarks/, scripts/); this suite runs "\
                          "against an installed wheel"
requires_source_tree = pytest.mark.skipif(not HAS_SOURCE_TREE, reason=SOURCE_TREE_SKIP_REASON)
if HAS_SOURCE_TREE and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # benchmarks/ is a package at the root, not installed

# Decoded data sets are cached (soap_cuda/experiments/idx_cache.py): the suite's own cache, so it
# neither reads nor fills the user's (subprocesses inherit it).
os.environ.setdefault("SOAP_CUDA_CACHE", tempfile.mkdtemp(prefix="soap_cuda_test_cache_"))

# Inputs are fresh each run; SOAP_CUDA_TEST_SEED=<n> replays a run (the header prints n).
RUN_SEED = int(os.environ.get("SOAP_CUDA_TEST_SEED", random.randrange(2**31)))


def pytest_configure(config):
    # registered here, not in pyproject.toml, so that a suite run without the checkout knows them
    for marker in ("cuda: needs a CUDA device (any test whose name or parameters say cuda)",
                   "slow: takes more than a few seconds",
                   "allocator_stats: reads torch's allocator statistics (which read 0 without the "
                   "caching allocator, as under compute-sanitizer)",
                   "cuda_graphs: captures CUDA graphs, which need the caching allocator (off "
                   "under compute-sanitizer)"):
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(config, items):
    """Mark `cuda` every test whose name or parameters say cuda (benchmarks/gpu.sh selects
    them with -m cuda: -k would also match a checkout folder named after the project)."""
    for item in items:
        if "cuda" in item.name:
            item.add_marker(pytest.mark.cuda)


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


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture()
def float64():
    """float64 as the default dtype, for the tests that hold runs equal to rounding."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def devices():
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


def plain_training_loop(model, optimizer, data, loss_fn):
    """The loop every graphed or compiled step is held to: loss, backward, step, zero_grad per
    batch; the losses, stacked."""
    losses = []
    for x, y in data:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses)
