"""Pure-PyTorch fa_linear: the op's default kernel (the Python fallback) and its test reference."""
from __future__ import annotations

import torch
from torch import Tensor

OP = "soap_cuda::fa_linear"


def _fail(op: str, arg: str, what: str) -> None:
    raise RuntimeError(f"{op}: argument '{arg}' {what}")


def _same(op: str, arg: str, t: Tensor, ref_arg: str, ref: Tensor) -> None:
    if t.dtype != ref.dtype:
        _fail(op, arg, f"must have the dtype of '{ref_arg}' ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        _fail(op, arg, f"must be on the device of '{ref_arg}' ({ref.device}), got {t.device}")


def check_fa_linear_args(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor):
    op = OP
    if not input.is_floating_point():
        _fail(op, "input", f"must be a floating-point tensor, got {input.dtype}")
    if input.dim() < 1:
        _fail(op, "input", "must have at least 1 dimension (..., in_features), got a 0-D tensor")
    if weight.dim() != 2:
        _fail(op, "weight", f"must be 2-D, got shape {list(weight.shape)}")
    _same(op, "weight", weight, "input", input)
    if input.shape[-1] != weight.shape[1]:
        _fail(op, "input", f"must end in in_features={weight.shape[1]} (weight is "
                           f"{list(weight.shape)}), got shape {list(input.shape)}")
    if b_matrix.shape != weight.shape:
        _fail(op, "b_matrix", f"must have the shape of 'weight' {list(weight.shape)}, got "
                              f"{list(b_matrix.shape)}")
    _same(op, "b_matrix", b_matrix, "input", input)
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            _fail(op, "bias", f"must have shape [{weight.shape[0]}] (out_features), got "
                              f"{list(bias.shape)}")
        _same(op, "bias", bias, "input", input)


def check_fa_linear_backward_args(grad_output: Tensor, input: Tensor, b_matrix: Tensor):
    op = OP + "_backward"
    if not grad_output.is_floating_point():
        _fail(op, "grad_output", f"must be a floating-point tensor, got {grad_output.dtype}")
    if b_matrix.dim() != 2:
        _fail(op, "b_matrix", f"must be 2-D, got shape {list(b_matrix.shape)}")
    if input.dim() < 1 or input.shape[-1] != b_matrix.shape[1]:
        _fail(op, "input", f"must end in in_features={b_matrix.shape[1]}, got shape "
                           f"{list(input.shape)}")
    if (grad_output.dim() != input.dim() or grad_output.shape[-1] != b_matrix.shape[0]
            or grad_output.shape[:-1] != input.shape[:-1]):
        _fail(op, "grad_output", f"must have shape (..., {b_matrix.shape[0]}) with the leading "
                                 f"dims of 'input' {list(input.shape)}, got "
                                 f"{list(grad_output.shape)}")
    _same(op, "input", input, "grad_output", grad_output)
    _same(op, "b_matrix", b_matrix, "grad_output", grad_output)


def fa_linear(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor) -> Tensor:
    """y = input @ weight^T + bias, for input of shape (..., in_features)."""
    check_fa_linear_args(input, weight, bias, b_matrix)
    x = input.reshape(-1, input.shape[-1])
    y = torch.addmm(bias, x, weight.t()) if bias is not None else x.mm(weight.t())
    return y.view(*input.shape[:-1], weight.shape[0])


def fa_linear_backward(grad_output: Tensor, input: Tensor, b_matrix: Tensor,
                       output_mask: list[bool]):
    """(grad_output @ B, grad_output^T @ input, grad_output summed over rows), each if asked."""
    check_fa_linear_backward_args(grad_output, input, b_matrix)
    g = grad_output.reshape(-1, grad_output.shape[-1])
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_input = g.mm(b_matrix).view(input.shape)
    if output_mask[1]:
        grad_weight = g.t().mm(input.reshape(-1, input.shape[-1]))
    if output_mask[2]:
        grad_bias = g.sum(0)
    return grad_input, grad_weight, grad_bias
