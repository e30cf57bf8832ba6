"""Functional entry points: what FALinear calls, usable on their own."""
from __future__ import annotations

import torch
from torch import Tensor

from . import func_transforms
from . import ops  # noqa: F401  (makes torch.ops.soap_cuda complete)
from .ops.autocast import cast as _autocast


_fa_linear_op = torch.ops.soap_cuda.fa_linear.default
# One C call each answers "is a torch.func transform active?" and "is autocast on anywhere?";
# the slower per-device autocast query runs only when the first says yes. Autocast itself is
# the ops' own (AutocastCPU/AutocastCUDA kernels: csrc/autocast/, or ops/autocast.py in the
# fallback); only the torch.func path, which does not call the op, casts here.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_transforms_active = func_transforms.transforms_active


def _cast_for_autocast(input, weight, bias, b_matrix):
    """The operands as the op's autocast kernel would cast them (ops/autocast.py's rule)."""
    device_type = input.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return input, weight, bias, b_matrix
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(_autocast(t, device_type, dtype) for t in (input, weight, bias, b_matrix))


def fa_linear(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor) -> Tensor:
    """`input @ weight.T + bias` forward; backward sends the error through `b_matrix`.

    Under autocast the operands are cast as nn.Linear's are: float32/float16/bfloat16 ones to
    the autocast dtype, float64 ones left alone, by the op's autocast kernel, which keeps B's
    low-precision copy until B changes (its version counter). The casts are differentiable, so
    fp32 master weights receive fp32 gradients. Under torch.func transforms (grad, vmap,
    jacrev, ...) the same rule runs as a transform-aware autograd Function
    (`soap_cuda.func_transforms`).
    """
    # (torch.compile traces the query, fullgraph, and guards on its answer.)
    if _transforms_active():
        if _any_autocast():
            input, weight, bias, b_matrix = _cast_for_autocast(input, weight, bias, b_matrix)
        return func_transforms.fa_linear(input, weight, bias, b_matrix)
    return _fa_linear_op(input, weight, bias, b_matrix)


_fa_conv_op = torch.ops.soap_cuda.fa_conv.default


def fa_conv(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor,
            stride, padding, dilation, groups: int = 1) -> Tensor:
    """`F.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups)` forward (zero
    padding, explicit ints per spatial dim); backward sends the error through `b_matrix`
    (grad_input is the transposed convolution of grad_output with B). An unbatched input
    (channels, *spatial) is taken as a batch of one, as nn.Conv does. Under autocast the
    operands are cast as nn.Conv's are (float64 ones left alone), by the op's autocast kernel."""
    if input.dim() == weight.dim() - 1:
        return _fa_conv_op(input.unsqueeze(0), weight, bias, b_matrix, stride, padding,
                           dilation, groups).squeeze(0)
    return _fa_conv_op(input, weight, bias, b_matrix, stride, padding, dilation, groups)
