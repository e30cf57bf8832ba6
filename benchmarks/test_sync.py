"""Feedback sync of a whole model: fused (one native call) vs the per-layer PyTorch expression."""
import pytest
import torch

from . import sync
from .conftest import device_dtype_params, timed


@pytest.mark.parametrize("rule", sync.RULES)
@pytest.mark.parametrize("spec", sync.MODELS, ids=[m.name for m in sync.MODELS])
@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("kind", sync.KINDS)
def test_sync(benchmark, kind, device, dtype, spec, rule):
    if spec.gpu_only and device == "cpu":
        pytest.skip(f"{spec.name} is sized for GPU memory bandwidth")
    benchmark.group = f"sync {spec.name} {rule} {device} {str(dtype)[6:]}"
    torch.manual_seed(0)
    model = sync.make_model(spec.dims, rule, device, dtype)
    timed(benchmark, sync.callables(model)[kind], device, rounds=20)
    benchmark.extra_info.update(bytes_moved=sync.bytes_moved(model),
                                parameters=sync.parameters(model))
