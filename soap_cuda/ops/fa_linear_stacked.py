"""fa_linear_stacked's Python registrations: default kernels, fake kernels and (fallback)
autograd formula; the native library registers the same formula in C++
(csrc/fa_linear_stacked/fa_linear_stacked_autograd.cpp). Backward is one
fa_linear_stacked_backward call asking only for what autograd needs; B gets W's gradient when
it requires one (Kolen-Pollack), by fa_linear's rule."""
import torch

from .. import _library
from .fa_linear import feedback_backward, setup_context
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


def _backward(ctx, grad_output):
    return feedback_backward(torch.ops.soap_cuda.fa_linear_stacked_backward, ctx, grad_output)


if _library.backend() == "python":
    torch.library.register_autograd("soap_cuda::fa_linear_stacked", _backward,
                                    setup_context=setup_context)


# Double backward: fa_linear_stacked_backward is linear in grad_output and in input, so its own
# derivative is three more batched products. Registered on every backend (the native library has
# no autograd kernel for this op), so create_graph=True through a stacked layer is exact, as for
# fa_linear_backward, and autograd's not-implemented fallback never runs.
def _setup_backward_context(ctx, inputs, output):
    grad_output, input, b_matrix, _ = inputs
    ctx.save_for_backward(grad_output, input, b_matrix)


def _backward_backward(ctx, gg_input, gg_weight, gg_bias):
    g, x, b_matrix = ctx.saved_tensors  # g (M, n, out), x (M, n, in), B (M, out, in)
    d_g = torch.zeros_like(g)
    d_x = d_b = None
    if gg_input is not None:  # grad_input = g @ B
        d_g = d_g + torch.bmm(gg_input, b_matrix.transpose(1, 2))
        d_b = torch.bmm(g.transpose(1, 2), gg_input)
    if gg_weight is not None:  # grad_weight = g^T @ x
        d_g = d_g + torch.bmm(x, gg_weight.transpose(1, 2))
        d_x = torch.bmm(g, gg_weight)
    if gg_bias is not None:  # grad_bias = g summed over the batch
        d_g = d_g + gg_bias.unsqueeze(1)
    return d_g, d_x, d_b, None


torch.library.register_autograd("soap_cuda::fa_linear_stacked_backward", _backward_backward,
                                setup_context=_setup_backward_context)
