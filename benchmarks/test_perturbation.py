"""K batched perturbation passes vs a Python loop of K passes (batch 64 and 256; peak memory in
extra_info)."""
import pytest

from . import perturbation
from .conftest import DEVICES, timed


@pytest.mark.parametrize("k", perturbation.K_VALUES)
@pytest.mark.parametrize("batch", perturbation.BATCHES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", perturbation.KINDS)
def test_perturbation(benchmark, kind, device, batch, k):
    benchmark.group = f"perturb b{batch} K{k} {device}"
    load = perturbation.PerturbWorkload(k, batch, device)
    fn = getattr(load, kind)
    timed(benchmark, fn, device, rounds=30)
    benchmark.extra_info.update(peak_extra_bytes=perturbation.peak_extra_bytes(fn, device),
                                noise_copies_bytes=load.noise_bytes())
