"""FA linear under torch.func transforms (grad, vjp, jacrev, vmap and their compositions).

Those transforms accept neither C++ autograd Functions (the native backend's node) nor
autograd Functions without `setup_context` (torch.library's generated one). When a transform
is active, `soap_cuda.fa_linear` runs this Function instead: the same forward and the same FA
backward, from standard differentiable ops, so per-example gradients (`vmap(grad(...))`) and
higher-order transforms work. Forward-mode transforms (jvp, jacfwd) are not supported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# transforms_active(): is any torch.func transform active on this thread? One C call, bound
# directly (no Python frame around it: it runs on every FA forward).
transforms_active = getattr(torch._C, "_are_functorch_transforms_active",
                            lambda: torch._C._functorch.peek_interpreter_stack() is not None)


class FALinearFunction(torch.autograd.Function):
    generate_vmap_rule = True  # forward and backward use only ops that vmap already knows

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor) -> Tensor:
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _, bias, b_matrix = inputs
        ctx.save_for_backward(input, b_matrix)
        ctx.has_bias = bias is not None
        ctx.learn_b = b_matrix.requires_grad

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        # Every gradient, unconditionally: torch.compile of a torch.func.grad traces
        # ctx.needs_input_grad wrongly (the second layer's weight got a zero gradient; cf.
        # pytorch/pytorch#159299).
        input, b_matrix = ctx.saved_tensors
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input = grad_output @ b_matrix
        grad_weight = g2.t() @ input.reshape(-1, input.shape[-1])
        grad_bias = g2.sum(0) if ctx.has_bias else None
        # B learns only under Kolen-Pollack, with W's gradient
        return grad_input, grad_weight, grad_bias, grad_weight if ctx.learn_b else None


def fa_linear(input: Tensor, weight: Tensor, bias: Tensor | None, b_matrix: Tensor) -> Tensor:
    return FALinearFunction.apply(input, weight, bias, b_matrix)
