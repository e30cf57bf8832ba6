"""Pure-PyTorch feedback_sync_: the op's default kernel (fallback) and its test reference."""
from __future__ import annotations

import torch
from torch import Tensor

from .memory import byte_range, overlaps, ranges_overlap
from .philox import philox_normal

OP = "soap_cuda::feedback_sync_"


def _fail(arg: str, what: str):
    raise RuntimeError(f"{OP}: argument '{arg}' {what}")


def _check_like(arg: str, t: Tensor, ref_arg: str, ref: Tensor, same_shape: bool = True) -> None:
    """t must match ref's dtype and device (and shape, unless same_shape=False), and be
    contiguous: B and |M| against W, and each W against weights[0]."""
    if same_shape and t.shape != ref.shape:
        _fail(arg, f"must have the shape of '{ref_arg}' {list(ref.shape)}, got {list(t.shape)}")
    if t.dtype != ref.dtype:
        _fail(arg, f"must have the dtype of '{ref_arg}' ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        _fail(arg, f"must be on the device of '{ref_arg}' ({ref.device}), got {t.device}")
    if not t.is_contiguous():
        _fail(arg, "must be contiguous (call .contiguous() first)")


def _check_table(arg: str, t: Tensor, dtype: torch.dtype, n: int, columns: int | None) -> None:
    """A per-layer argument: one entry (columns=None) or one row of `columns` per layer."""
    dim = 1 if columns is None else 2
    if t.dim() != dim:
        _fail(arg, f"must be {dim}-D, got shape {list(t.shape)}")
    if t.dtype != dtype:
        _fail(arg, f"must be {str(dtype).replace('torch.', '')}, got {t.dtype}")
    if columns is None and t.numel() != n:
        _fail(arg, f"must have one entry per layer ({n}), got {t.numel()}")
    if columns is not None and (t.shape[0] != n or t.shape[1] != columns):
        _fail(arg, f"must have shape [{n}, {columns}] (draw, seed, offset per layer), got "
                   f"{list(t.shape)}")
    if not t.is_contiguous():
        _fail(arg, "must be contiguous (call .contiguous() first)")


def _check_due_and_streams(n: int, due, streams, device) -> None:
    if due is not None:
        _check_table("due", due, torch.bool, n, None)
        if n and due.device != device:
            _fail("due", f"must be on the device of 'weights[0]' ({device}), got {due.device}")
    if streams is not None:
        _check_table("streams", streams, torch.int64, n, 3)
        if n and streams.device != device and streams.device.type != "cpu":
            _fail("streams", f"must be on the device of 'weights[0]' ({device}) or on the CPU, "
                             f"got {streams.device}")


def check_feedback_sync_args(weights, b_matrices, magnitudes, scales: Tensor, due=None,
                             streams=None, check_memory: bool = True) -> None:
    """check_memory=False skips the aliasing check (fake tensors have no memory to compare)."""
    n = len(weights)
    if len(b_matrices) != n or len(magnitudes) != n:
        raise RuntimeError(f"{OP}: arguments 'weights', 'b_matrices' and 'magnitudes' must have "
                           f"the same length, got {n}, {len(b_matrices)} and {len(magnitudes)}")
    _check_table("scales", scales, torch.float64, n, None)
    _check_due_and_streams(n, due, streams, weights[0].device if n else None)
    if n == 0:
        return
    first = weights[0]
    if scales.device != first.device and scales.device.type != "cpu":
        _fail("scales", f"must be on the device of 'weights[0]' ({first.device}) or on the CPU, "
                        f"got {scales.device}")
    for i, (w, b, m) in enumerate(zip(weights, b_matrices, magnitudes)):
        wi, bi, mi = f"weights[{i}]", f"b_matrices[{i}]", f"magnitudes[{i}]"
        if not w.is_floating_point():
            _fail(wi, f"must be a floating-point tensor, got {w.dtype}")
        _check_like(wi, w, "weights[0]", first, same_shape=False)
        _check_like(bi, b, wi, w)
        if check_memory and overlaps(b, w):
            _fail(bi, f"must not be the same memory as '{wi}'")
        if m is not None:
            _check_like(mi, m, wi, w)
    if streams is not None and streams.device.type == "cpu" and check_memory:
        for i, m in enumerate(magnitudes):
            if m is not None and int(streams[i, 0]) != 0:
                _fail(f"magnitudes[{i}]", f"must be None where 'streams' row {i} draws the "
                                          f"magnitude")
    if check_memory:
        _check_no_cross_layer_overlap(weights, b_matrices)


def _check_no_cross_layer_overlap(weights, b_matrices) -> None:
    """No B may share memory with another layer's W or B (the result would depend on the order
    of the writes); layers may share a W, which is only read."""
    w_ranges = [byte_range(w) for w in weights]
    b_ranges = [byte_range(b) for b in b_matrices]
    for i, b_range in enumerate(b_ranges):
        for j in range(len(weights)):
            if j == i:
                continue
            if ranges_overlap(b_range, w_ranges[j]):
                _fail(f"b_matrices[{i}]", f"must not share memory with 'weights[{j}]'")
            if j > i and ranges_overlap(b_range, b_ranges[j]):
                _fail(f"b_matrices[{i}]", f"must not share memory with 'b_matrices[{j}]'")


def sync_value(w: Tensor, m: Tensor | None, scale: Tensor) -> Tensor:
    """scale * sign(w) * |m|, computed as the kernels do (in float32 for half types, float64 for
    float64) so the bits agree; sign(0) = 0 and NaN weights stay NaN."""
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    value = torch.sign(w.to(acc))
    if m is not None:
        value = value * m.to(acc).abs()
    value = value * scale.to(acc)
    value = torch.where(torch.isnan(w), w.to(acc), value)
    return value.to(w.dtype)


def drawn_magnitude(w: Tensor, seed: int, offset: int) -> Tensor:
    """|M| of a drawing row: Philox stream (seed, offset) in W's shape and dtype (what
    philox_normal_fill writes into such a tensor)."""
    return philox_normal(seed, offset, w.shape, dtype=w.dtype, device=w.device)


def feedback_sync_(weights, b_matrices, magnitudes, scales: Tensor, due=None,
                   streams=None) -> None:
    check_feedback_sync_args(weights, b_matrices, magnitudes, scales, due, streams)
    rows = streams.tolist() if streams is not None else None
    flags = due.tolist() if due is not None else None
    for i, (w, b, m) in enumerate(zip(weights, b_matrices, magnitudes)):
        if flags is not None and not flags[i]:
            continue
        if rows is not None and rows[i][0] != 0:
            m = drawn_magnitude(w, rows[i][1], rows[i][2])
        b.copy_(sync_value(w, m, scales[i]))
