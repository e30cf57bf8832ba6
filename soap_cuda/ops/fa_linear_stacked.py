"""fa_linear_stacked's Python registrations: default kernels, fake kernels and (fallback)
autograd formula; the native library registers the same formula in C++
(csrc/fa_linear_stacked/fa_linear_stacked_autograd.cpp). Backward is one
fa_linear_stacked_backward call asking only for what autograd needs."""
import torch

from .. import _library
from ..reference.fa_linear_stacked import (check_fa_linear_stacked_args,
                                           check_fa_linear_stacked_backward_args,
                                           fa_linear_stacked, fa_linear_stacked_backward)

_library.register_default("fa_linear_stacked", fa_linear_stacked)
_library.register_default("fa_linear_stacked_backward", fa_linear_stacked_backward)


@torch.library.register_fake("soap_cuda::fa_linear_stacked")
def _forward_fake(input, weight, bias, b_matrix):
    check_fa_linear_stacked_args(input, weight, bias, b_matrix)
    return input.new_empty((input.shape[0], input.shape[1], weight.shape[1]))


@torch.library.register_fake("soap_cuda::fa_linear_stacked_backward")
def _backward_fake(grad_output, input, b_matrix, output_mask):
    check_fa_linear_stacked_backward_args(grad_output, input, b_matrix)
    return (input.new_empty(input.shape) if output_mask[0] else None,
            b_matrix.new_empty(b_matrix.shape) if output_mask[1] else None,
            grad_output.new_empty((grad_output.shape[0], grad_output.shape[2]))
            if output_mask[2] else None)


def _setup_context(ctx, inputs, output):
    input, weight, bias, b_matrix = inputs
    ctx.save_for_backward(input, b_matrix)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, b_matrix = ctx.saved_tensors
    need_input, need_weight, need_bias, _ = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias = torch.ops.soap_cuda.fa_linear_stacked_backward(
        grad_output, input, b_matrix, [need_input, need_weight, need_bias and ctx.has_bias])
    return grad_input, grad_weight, grad_bias, None


if _library.backend() == "python":
    torch.library.register_autograd("soap_cuda::fa_linear_stacked", _backward,
                                    setup_context=_setup_context)
