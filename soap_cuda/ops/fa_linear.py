"""fa_linear's Python registrations: default kernel, fake kernel, and (fallback) autograd formula.

Backward is one call of the `fa_linear_backward` op (itself an op, so torch.compile and
double dispatch see it), asking only for the gradients autograd needs.
"""
import torch

from .. import _library
from . import autocast
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


def setup_context(ctx, inputs, output):
    """What an FA linear op's (plain or stacked) backward keeps: input, B, whether a bias."""
    input, weight, bias, b_matrix = inputs
    ctx.save_for_backward(input, b_matrix)
    ctx.has_bias = bias is not None


def kolen_pollack_grad(grad_weight, need_weight, learn_b):
    # W's gradient for B, a tensor of its own when W takes it too (the two .grad tensors must
    # not alias), copy-on-write on the CPU outside graphs and tracing, as in C++
    # (csrc/common/feedback_grads.h says why not on CUDA)
    if not learn_b:
        return None
    if not need_weight:
        return grad_weight
    if torch.is_grad_enabled() or type(grad_weight) is not torch.Tensor \
            or grad_weight.device.type != "cpu" or torch.compiler.is_compiling():
        return grad_weight.clone()
    return torch._lazy_clone(grad_weight)


def feedback_backward(backward_op, ctx, grad_output):
    """An FA linear op's backward (plain or stacked, by its backward op): one call asking only
    for what autograd needs; b_matrix gets a gradient only under Kolen-Pollack (W's), otherwise
    it is fixed or synced."""
    input, b_matrix = ctx.saved_tensors
    need_input, need_weight, need_bias, learn_b = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias = backward_op(
        grad_output, input, b_matrix,
        [need_input, need_weight or learn_b, need_bias and ctx.has_bias])
    return (grad_input, grad_weight if need_weight else None, grad_bias,
            kolen_pollack_grad(grad_weight, need_weight, learn_b))


def _backward(ctx, grad_output):
    return feedback_backward(torch.ops.soap_cuda.fa_linear_backward, ctx, grad_output)


# The native library registers this same formula in C++ (csrc/fa_linear/fa_linear_autograd.cpp),
# which keeps Python off the training step; the fallback registers it here.
if _library.backend() == "python":
    torch.library.register_autograd("soap_cuda::fa_linear", _backward,
                                    setup_context=setup_context)
    autocast.register("fa_linear")


# Double backward: fa_linear_backward is linear in grad_output and in input, so its own
# derivative is three more products. Registered on every backend (the native library has no
# autograd kernel for this op), so create_graph=True through an FA layer is exact, not silent.
def _setup_backward_context(ctx, inputs, output):
    grad_output, input, b_matrix, _ = inputs
    ctx.save_for_backward(grad_output, input, b_matrix)


def _backward_backward(ctx, gg_input, gg_weight, gg_bias):
    grad_output, input, b_matrix = ctx.saved_tensors
    g = grad_output.reshape(-1, grad_output.shape[-1])
    x = input.reshape(-1, input.shape[-1])
    d_g = torch.zeros_like(g)
    d_x = d_b = None
    if gg_input is not None:  # grad_input = g @ B
        ggi = gg_input.reshape(-1, input.shape[-1])
        d_g = d_g + ggi.mm(b_matrix.t())
        d_b = g.t().mm(ggi)
    if gg_weight is not None:  # grad_weight = g^T @ x
        d_g = d_g + x.mm(gg_weight.t())
        d_x = g.mm(gg_weight).view(input.shape)
    if gg_bias is not None:  # grad_bias = sum over rows of g
        d_g = d_g + gg_bias
    return d_g.view(grad_output.shape), d_x, d_b, None


torch.library.register_autograd("soap_cuda::fa_linear_backward", _backward_backward,
                                setup_context=_setup_backward_context)
