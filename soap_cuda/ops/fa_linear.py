"""fa_linear's Python registrations: default kernel, fake kernel, and (fallback) autograd formula.

Backward is one call of the `fa_linear_backward` op (itself an op, so torch.compile and
double dispatch see it), asking only for the gradients autograd needs.
"""
import torch

from .. import _library
from ..reference.fa_linear import (check_fa_linear_args, check_fa_linear_backward_args,
                                   fa_linear, fa_linear_backward)

_library.register_default("fa_linear", fa_linear)
_library.register_default("fa_linear_backward", fa_linear_backward)


@torch.library.register_fake("soap_cuda::fa_linear")
def _fa_linear_fake(input, weight, bias, b_matrix):
    check_fa_linear_args(input, weight, bias, b_matrix)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("soap_cuda::fa_linear_backward")
def _fa_linear_backward_fake(grad_output, input, b_matrix, output_mask):
    check_fa_linear_backward_args(grad_output, input, b_matrix)
    return (
        input.new_empty(input.shape) if output_mask[0] else None,
        b_matrix.new_empty(b_matrix.shape) if output_mask[1] else None,
        grad_output.new_empty(grad_output.shape[-1:]) if output_mask[2] else None,
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, b_matrix = inputs
    ctx.save_for_backward(input, b_matrix)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, b_matrix = ctx.saved_tensors
    need_input, need_weight, need_bias, _ = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias = torch.ops.soap_cuda.fa_linear_backward(
        grad_output, input, b_matrix,
        [need_input, need_weight, need_bias and ctx.has_bias])
    # No gradient flows to b_matrix: the feedback path is fixed (or synced), never learned.
    return grad_input, grad_weight, grad_bias, None


# The native library registers this same formula in C++ (csrc/fa_linear/fa_linear_autograd.cpp),
# which keeps Python off the training step; the fallback registers it here.
if _library.backend() == "python":
    torch.library.register_autograd("soap_cuda::fa_linear", _backward,
                                    setup_context=_setup_context)
