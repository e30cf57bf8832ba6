"""fused FALinear vs the seed's Python FALinear vs nn.Linear: forward, backward, train step."""
import pytest

from . import layers
from .conftest import device_dtype_params, timed


@pytest.mark.parametrize("phase", layers.PHASES)
@pytest.mark.parametrize("shape", layers.SHAPES, ids=[s.name for s in layers.SHAPES])
@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("kind", layers.KINDS)
def test_layers(benchmark, kind, device, dtype, shape, phase):
    benchmark.group = f"layers {shape.name} {phase} {device} {str(dtype)[6:]}"
    load = layers.Workload(kind, shape, device, dtype)
    setup, run = load.callables(phase)
    heavy_cpu = shape.heavy and device == "cpu"  # ~1 s a step on a small CPU: fewer rounds
    timed(benchmark, run, device, setup, rounds=3 if heavy_cpu else 30,
          warmup=1 if heavy_cpu else 3)
    benchmark.extra_info.update(flops=layers.flops(shape, phase), batch=shape.batch)
