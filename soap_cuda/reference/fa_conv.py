"""Pure-PyTorch fa_conv: the op's default kernel (the Python fallback) and its test reference.

grad_input is the transposed convolution of grad_output with B, computed with torch.nn.grad's
conv*d_input (an independent route from the native kernels' aten::convolution_backward)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import grad as nn_grad

from .fa_linear import _fail, _same

OP = "soap_cuda::fa_conv"
_FORWARD = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
            3: torch.nn.functional.conv3d}
_GRAD_INPUT = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input, 3: nn_grad.conv3d_input}
_GRAD_WEIGHT = {1: nn_grad.conv1d_weight, 2: nn_grad.conv2d_weight, 3: nn_grad.conv3d_weight}


def _check_geometry(op, filters, stride, padding, dilation, groups):
    spatial = filters.dim() - 2
    for arg, values, low in (("stride", stride, 1), ("padding", padding, 0),
                             ("dilation", dilation, 1)):
        if len(values) != spatial:
            _fail(op, arg, f"must have one entry per spatial dimension ({spatial}), got "
                           f"{list(values)}")
        if any(v < low for v in values):
            _fail(op, arg, f"must be >= {low}, got {list(values)}")
    if groups < 1 or filters.shape[0] % groups:
        _fail(op, "groups", f"must be >= 1 and divide out_channels={filters.shape[0]}, got "
                            f"{groups}")


def _check_filters(op, arg, t):
    if not 3 <= t.dim() <= 5:
        _fail(op, arg, "must be 3-, 4- or 5-D (out_channels, in_channels / groups, "
                       f"*kernel_size), got shape {list(t.shape)}")


def _check_input(op, input, filters, groups):
    if input.dim() != filters.dim() or input.shape[1] != filters.shape[1] * groups:
        _fail(op, "input", f"must have shape (batch, {filters.shape[1] * groups}, "
                           f"{filters.dim() - 2} spatial dims) for filters "
                           f"{list(filters.shape)} and groups={groups}, got {list(input.shape)}")


def check_fa_conv_args(input, weight, bias, b_matrix, stride, padding, dilation, groups):
    op = OP
    if not input.is_floating_point():
        _fail(op, "input", f"must be a floating-point tensor, got {input.dtype}")
    _check_filters(op, "weight", weight)
    _same(op, "weight", weight, "input", input)
    if b_matrix.shape != weight.shape:
        _fail(op, "b_matrix", f"must have the shape of 'weight' {list(weight.shape)}, got "
                              f"{list(b_matrix.shape)}")
    _same(op, "b_matrix", b_matrix, "input", input)
    _check_geometry(op, weight, stride, padding, dilation, groups)
    _check_input(op, input, weight, groups)
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            _fail(op, "bias", f"must have shape [{weight.shape[0]}] (out_channels), got "
                              f"{list(bias.shape)}")
        _same(op, "bias", bias, "input", input)


def check_fa_conv_backward_args(grad_output, input, b_matrix, stride, padding, dilation, groups):
    op = OP + "_backward"
    if not grad_output.is_floating_point():
        _fail(op, "grad_output", f"must be a floating-point tensor, got {grad_output.dtype}")
    _check_filters(op, "b_matrix", b_matrix)
    _check_geometry(op, b_matrix, stride, padding, dilation, groups)
    _check_input(op, input, b_matrix, groups)
    if (grad_output.dim() != input.dim() or grad_output.shape[0] != input.shape[0]
            or grad_output.shape[1] != b_matrix.shape[0]):
        _fail(op, "grad_output", f"must have shape ({input.shape[0]}, {b_matrix.shape[0]}, ...) "
                                 f"for input {list(input.shape)}, got "
                                 f"{list(grad_output.shape)}")
    _same(op, "input", input, "grad_output", grad_output)
    _same(op, "b_matrix", b_matrix, "grad_output", grad_output)


def fa_conv(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor, stride,
            padding, dilation, groups: int) -> Tensor:
    check_fa_conv_args(input, weight, bias, b_matrix, stride, padding, dilation, groups)
    return _FORWARD[weight.dim() - 2](input, weight, bias, list(stride), list(padding),
                                      list(dilation), groups)


def fa_conv_backward(grad_output: Tensor, input: Tensor, b_matrix: Tensor, stride, padding,
                     dilation, groups: int, output_mask):
    check_fa_conv_backward_args(grad_output, input, b_matrix, stride, padding, dilation, groups)
    n = b_matrix.dim() - 2
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_input = _GRAD_INPUT[n](input.shape, b_matrix, grad_output, list(stride),
                                    list(padding), list(dilation), groups)
    if output_mask[1]:
        grad_weight = _GRAD_WEIGHT[n](input, b_matrix.shape, grad_output, list(stride),
                                      list(padding), list(dilation), groups)
    if output_mask[2]:
        grad_bias = grad_output.sum([0] + list(range(2, grad_output.dim())))
    return grad_input, grad_weight, grad_bias
