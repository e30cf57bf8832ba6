"""Pure-PyTorch dfa_project: the op's default kernel (fallback) and its test reference."""
from __future__ import annotations

import torch
from torch import Tensor

from .fa_linear import _fail, _same

OP = "soap_cuda::dfa_project"


def check_dfa_project_args(error: Tensor, b_matrices) -> None:
    if not error.is_floating_point():
        _fail(OP, "error", f"must be a floating-point tensor, got {error.dtype}")
    if error.dim() < 1:
        _fail(OP, "error", f"must have at least 1 dimension (..., out), got shape "
                           f"{list(error.shape)}")
    if len(b_matrices) == 0:
        _fail(OP, "b_matrices", "must not be empty")
    out = error.shape[-1]
    for i, b in enumerate(b_matrices):
        arg = f"b_matrices[{i}]"
        if b.dim() != 2 or b.shape[0] != out:
            _fail(OP, arg, f"must have shape ({out}, k) (out = the last dim of 'error'), got "
                           f"{list(b.shape)}")
        _same(OP, arg, b, "error", error)


def dfa_project(error: Tensor, b_matrices) -> Tensor:
    """error.reshape(rows, out) @ cat(b_matrices, dim=1)."""
    check_dfa_project_args(error, b_matrices)
    rows = error.reshape(-1, error.shape[-1])
    return rows @ torch.cat(list(b_matrices), dim=1)
