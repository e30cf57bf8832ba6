"""Whether two tensors' memory ranges overlap: the references' stand-in for ATen's
get_overlap_status, used where an op writes one tensor while reading the other."""
from __future__ import annotations

from torch import Tensor


def overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether the address ranges spanned by two contiguous tensors intersect."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()
