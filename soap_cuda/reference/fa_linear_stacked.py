"""Pure-PyTorch fa_linear_stacked(_backward): the ops' default kernels (fallback) and their test
reference. Model m's slice is fa_linear on that model's tensors."""
from __future__ import annotations

from torch import Tensor

from .fa_linear import _fail, _same

OP = "soap_cuda::fa_linear_stacked"


def _dim(op, arg, t, dim):
    if t.dim() != dim:
        _fail(op, arg, f"must be {dim}-D, got shape {list(t.shape)}")


def check_fa_linear_stacked_args(input, weight, bias, b_matrix) -> None:
    if not input.is_floating_point():
        _fail(OP, "input", f"must be a floating-point tensor, got {input.dtype}")
    _dim(OP, "input", input, 3)
    _dim(OP, "weight", weight, 3)
    if weight.shape[0] != input.shape[0] or weight.shape[2] != input.shape[2]:
        _fail(OP, "weight", f"must have shape ({input.shape[0]}, out, {input.shape[2]}) for "
                            f"input {list(input.shape)}, got {list(weight.shape)}")
    if b_matrix.shape != weight.shape:
        _fail(OP, "b_matrix", f"must have the shape of 'weight' {list(weight.shape)}, got "
                              f"{list(b_matrix.shape)}")
    _same(OP, "weight", weight, "input", input)
    _same(OP, "b_matrix", b_matrix, "input", input)
    if bias is not None:
        if bias.dim() != 2 or tuple(bias.shape) != tuple(weight.shape[:2]):
            _fail(OP, "bias", f"must have shape {list(weight.shape[:2])} (models, out), got "
                              f"{list(bias.shape)}")
        _same(OP, "bias", bias, "input", input)


def check_fa_linear_stacked_backward_args(grad_output, input, b_matrix) -> None:
    op = OP + "_backward"
    if not grad_output.is_floating_point():
        _fail(op, "grad_output", f"must be a floating-point tensor, got {grad_output.dtype}")
    _dim(op, "grad_output", grad_output, 3)
    _dim(op, "input", input, 3)
    _dim(op, "b_matrix", b_matrix, 3)
    if b_matrix.shape[0] != input.shape[0] or b_matrix.shape[2] != input.shape[2]:
        _fail(op, "b_matrix", f"must have shape ({input.shape[0]}, out, {input.shape[2]}) for "
                              f"input {list(input.shape)}, got {list(b_matrix.shape)}")
    want = (input.shape[0], input.shape[1], b_matrix.shape[1])
    if tuple(grad_output.shape) != want:
        _fail(op, "grad_output", f"must have shape ({want[0]}, {want[1]}, {want[2]}), got "
                                 f"{list(grad_output.shape)}")
    _same(op, "input", input, "grad_output", grad_output)
    _same(op, "b_matrix", b_matrix, "grad_output", grad_output)


def fa_linear_stacked(input: Tensor, weight: Tensor, bias, b_matrix: Tensor) -> Tensor:
    check_fa_linear_stacked_args(input, weight, bias, b_matrix)
    out = input @ weight.transpose(1, 2)
    return out + bias.unsqueeze(1) if bias is not None else out


def fa_linear_stacked_backward(grad_output: Tensor, input: Tensor, b_matrix: Tensor,
                               output_mask):
    check_fa_linear_stacked_backward_args(grad_output, input, b_matrix)
    return (grad_output @ b_matrix if output_mask[0] else None,
            grad_output.transpose(1, 2) @ input if output_mask[1] else None,
            grad_output.sum(1) if output_mask[2] else None)
