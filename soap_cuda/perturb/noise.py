"""The Philox noise the perturbation kernels regenerate, materialised, and its stream layout."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops  # noqa: F401  (makes torch.ops.soap_cuda complete)

# Linear layer i of a model draws from stream (seed, offset * MAX_LAYERS + i), so consecutive
# offsets (one per step) never reuse a stream.
MAX_LAYERS = 4096


def layer_offset(offset: int, layer_index: int) -> int:
    if not 0 <= layer_index < MAX_LAYERS:
        raise ValueError(f"layer_index must be in [0, {MAX_LAYERS}), got {layer_index}")
    if not 0 <= offset < (1 << 62) // MAX_LAYERS:
        raise ValueError(f"offset must be in [0, 2^62 / {MAX_LAYERS}), got {offset}")
    return offset * MAX_LAYERS + layer_index


def philox_normal(seed: int, offset: int, shape, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Tensor:
    """Standard-normal noise of stream (seed, offset): element i (row-major) is noise element i,
    the same numbers on CPU, CUDA and in the Python fallback."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    torch.ops.soap_cuda.philox_normal_fill(out, seed, offset)
    return out
