"""Functional entry points: what FALinear calls, usable on their own."""
from __future__ import annotations

import torch
from torch import Tensor

from . import ops  # noqa: F401  (makes torch.ops.soap_cuda complete)


_fa_linear_op = torch.ops.soap_cuda.fa_linear.default
# One C call answers "is autocast on anywhere?"; the per-device query runs only when it is.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)


def _autocast_dtype(input: Tensor):
    if _any_autocast is not None and not torch.compiler.is_compiling() and not _any_autocast():
        return None
    device_type = input.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast(t: Tensor, dtype: torch.dtype) -> Tensor:
    # autocast's own eligibility rule (ATen's cached_cast): floating tensors other than float64
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def fa_linear(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor) -> Tensor:
    """`input @ weight.T + bias` forward; backward sends the error through `b_matrix`.

    Under autocast the operands are cast as nn.Linear's are: float32/float16/bfloat16 ones to
    the autocast dtype, float64 ones left alone. The casts are differentiable, so fp32 master
    weights receive fp32 gradients.
    """
    dtype = _autocast_dtype(input)
    if dtype is not None:
        input, weight, b_matrix = (_autocast(input, dtype), _autocast(weight, dtype),
                                   _autocast(b_matrix, dtype))
        bias = _autocast(bias, dtype) if bias is not None else None
    return _fa_linear_op(input, weight, bias, b_matrix)
