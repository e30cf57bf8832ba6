"""Pure-PyTorch dfa_project: the op's default kernel (fallback) and its test reference."""
from __future__ import annotations

import torch
from torch import Tensor

OP = "soap_cuda::dfa_project"


def check_dfa_project_args(error: Tensor, b_matrices) -> None:
    if not error.is_floating_point():
        raise RuntimeError(f"{OP}: argument 'error' must be a floating-point tensor, got "
                           f"{error.dtype}")
    if error.dim() < 1:
        raise RuntimeError(f"{OP}: argument 'error' must have at least 1 dimension (..., out), "
                           f"got shape {list(error.shape)}")
    if len(b_matrices) == 0:
        raise RuntimeError(f"{OP}: argument 'b_matrices' must not be empty")
    out = error.shape[-1]
    for i, b in enumerate(b_matrices):
        arg = f"b_matrices[{i}]"
        if b.dim() != 2 or b.shape[0] != out:
            raise RuntimeError(f"{OP}: argument '{arg}' must have shape ({out}, k) (out = the "
                               f"last dim of 'error'), got {list(b.shape)}")
        if b.dtype != error.dtype:
            raise RuntimeError(f"{OP}: argument '{arg}' must have the dtype of 'error' "
                               f"({error.dtype}), got {b.dtype}")
        if b.device != error.device:
            raise RuntimeError(f"{OP}: argument '{arg}' must be on the device of 'error' "
                               f"({error.device}), got {b.device}")


def dfa_project(error: Tensor, b_matrices) -> Tensor:
    """error.reshape(rows, out) @ cat(b_matrices, dim=1)."""
    check_dfa_project_args(error, b_matrices)
    rows = error.reshape(-1, error.shape[-1])
    return rows @ torch.cat(list(b_matrices), dim=1)
