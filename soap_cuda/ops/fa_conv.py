"""fa_conv's Python registrations: default kernel, fake kernels, and the autograd formula.

The autograd formula is registered here for the fallback (the native library has it in C++);
backward is one call of the `fa_conv_backward` op (native: ATen's
convolution_backward with B in W's place), asking only for the gradients autograd needs.
"""
import torch

from .. import _library
from . import autocast
from .fa_linear import kolen_pollack_grad
from ..reference.fa_conv import (check_fa_conv_args, check_fa_conv_backward_args, fa_conv,
                                 fa_conv_backward)

_library.register_default("fa_conv", fa_conv)
_library.register_default("fa_conv_backward", fa_conv_backward)


@torch.library.register_fake("soap_cuda::fa_conv")
def _fa_conv_fake(input, weight, bias, b_matrix, stride, padding, dilation, groups):
    check_fa_conv_args(input, weight, bias, b_matrix, stride, padding, dilation, groups)
    return torch.ops.aten.convolution(input, weight, bias, stride, padding, dilation, False,
                                      [0] * len(stride), groups)


@torch.library.register_fake("soap_cuda::fa_conv_backward")
def _fa_conv_backward_fake(grad_output, input, b_matrix, stride, padding, dilation, groups,
                           output_mask):
    check_fa_conv_backward_args(grad_output, input, b_matrix, stride, padding, dilation, groups)
    return (input.new_empty(input.shape) if output_mask[0] else None,
            b_matrix.new_empty(b_matrix.shape) if output_mask[1] else None,
            grad_output.new_empty(b_matrix.shape[:1]) if output_mask[2] else None)


def _setup_context(ctx, inputs, output):
    input, weight, bias, b_matrix, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, b_matrix)
    ctx.has_bias = bias is not None
    ctx.geometry = (stride, padding, dilation, groups)


def _backward(ctx, grad_output):
    input, b_matrix = ctx.saved_tensors
    need_input, need_weight, need_bias, learn_b = ctx.needs_input_grad[:4]
    grad_input, grad_weight, grad_bias = torch.ops.soap_cuda.fa_conv_backward(
        grad_output, input, b_matrix, *ctx.geometry,
        [need_input, need_weight or learn_b, need_bias and ctx.has_bias])
    # b_matrix gets a gradient only under Kolen-Pollack (W's); otherwise it is fixed or synced.
    return (grad_input, grad_weight if need_weight else None, grad_bias,
            kolen_pollack_grad(grad_weight, need_weight, learn_b), None, None, None, None)


# The native library registers this same formula in C++ (csrc/fa_conv/fa_conv_autograd.cpp),
# which keeps Python off the training step; the fallback registers it here.
if _library.backend() == "python":
    torch.library.register_autograd("soap_cuda::fa_conv", _backward,
                                    setup_context=_setup_context)
    autocast.register("fa_conv")


# Double backward (create_graph=True through an FA conv): fa_conv_backward is linear in
# grad_output and in input; its derivative is that of the reference's formula, taken by
# autograd on the reference (plain differentiable PyTorch ops).
def _setup_backward_context(ctx, inputs, output):
    grad_output, input, b_matrix, stride, padding, dilation, groups, output_mask = inputs
    ctx.save_for_backward(grad_output, input, b_matrix)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.output_mask = output_mask


def _backward_backward(ctx, *grads):
    saved = ctx.saved_tensors
    wanted = ctx.needs_input_grad[:3]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(w) for t, w in zip(saved, wanted)]
        outs = fa_conv_backward(*leaves, *ctx.geometry, ctx.output_mask)
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None]
        inputs = [leaf for leaf, w in zip(leaves, wanted) if w]
        found = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                    allow_unused=True, create_graph=torch.is_grad_enabled()) \
            if pairs and inputs else [None] * len(inputs)
    found = iter(found)
    result = [next(found) if w else None for w in wanted]
    return (*result, None, None, None, None, None)


torch.library.register_autograd("soap_cuda::fa_conv_backward", _backward_backward,
                                setup_context=_setup_backward_context)
