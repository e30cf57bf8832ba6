"""Whether two tensors' memory ranges overlap: the references' stand-in for ATen's
get_overlap_status, used where an op writes one tensor while reading the other."""
from __future__ import annotations

from torch import Tensor


def byte_range(t: Tensor) -> tuple[int, int]:
    """[start, end) of a contiguous tensor's bytes (empty for no elements)."""
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def ranges_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < a[1] and b[0] < b[1] and a[0] < b[1] and b[0] < a[1]


def overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether the address ranges spanned by two contiguous tensors intersect."""
    return ranges_overlap(byte_range(a), byte_range(b))
