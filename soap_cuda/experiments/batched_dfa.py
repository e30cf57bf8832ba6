"""Direct feedback alignment for stacked models: soap_cuda.dfa's output identity, whose backward
turns every model's output error e (M, N, classes) into each recorded layer input's error
e @ B_l, one batched GEMM against every layer's B side by side."""
from __future__ import annotations

import torch


class _StackedDFAOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, count, models_first, *tensors):
        inputs, matrices = tensors[:count], tensors[count:]
        ctx.input_meta = [(x.shape, x.dtype) for x in inputs]
        ctx.count, ctx.models_first = count, models_first
        ctx.save_for_backward(*matrices)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        matrices = [b.to(error.dtype) for b in ctx.saved_tensors]
        projected = torch.bmm(error, torch.cat(matrices, dim=2))  # (M, N, sum of k_l)
        grads, start = [], 0
        for (shape, dtype), b, first in zip(ctx.input_meta, matrices, ctx.models_first):
            k = b.shape[2]
            grad = projected[:, :, start:start + k]
            # (M, N, k) -> the input's layout: (M, N, ...) as it is, or the models' channels
            # side by side, (N, M * C, ...) or (N, M * k)
            grad = grad.reshape(shape) if first else grad.transpose(0, 1).reshape(shape)
            grads.append(grad.to(dtype))
            start += k
        return (error, None, None, *grads, *([None] * ctx.count))


def dfa_output(output: torch.Tensor, taps: list[tuple]) -> torch.Tensor:
    """`output` (M, N, classes) unchanged, with the DFA backward for `taps`: (layer input as the
    network saw it, that layer's B (M, classes, k), whether the input is (M, N, ...) rather than
    model-major channels (N, M * C, ...))."""
    return _StackedDFAOutput.apply(output, len(taps), tuple(first for _, _, first in taps),
                                   *[t for t, _, _ in taps], *[b for _, b, _ in taps])
