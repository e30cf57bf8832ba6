"""FALinear: a drop-in for nn.Linear (and the seed's FALinear) trained by feedback alignment."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from .functional import fa_linear


class FALinear(nn.Module):
    """Linear layer whose backward sends the error through a fixed random matrix `b_matrix`.

    Forward is exactly `nn.Linear`'s: `y = x @ weight.T + bias`, for x of shape (..., in).
    Backward: `grad_x = grad_y @ b_matrix` (instead of `@ weight`); weight and bias get their
    usual gradients. `b_matrix` has weight's shape (out, in) and is a buffer, not a parameter.

    Initialisation follows the seed: xavier-normal `b_matrix`, then xavier-normal `weight`, then
    a zero bias, drawing from the RNG in the seed's order, so the same torch seed gives the same
    layer as the seed's class (and its state_dict loads here, strict).
    """

    __constants__ = ["in_features", "out_features"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("b_matrix", torch.empty(out_features, in_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.xavier_normal_(self.b_matrix)
        init.xavier_normal_(self.weight)
        if self.bias is not None:
            # uniform_(0, 0) rather than zeros_: it consumes the RNG as the seed's class does.
            init.uniform_(self.bias, 0.0, 0.0)

    def forward(self, input: Tensor) -> Tensor:
        return fa_linear(input, self.weight, self.bias, self.b_matrix)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, generator: torch.Generator | None = None,
                    **kwargs) -> "FALinear":
        """An FALinear holding `linear`'s weights, with a fresh xavier-normal feedback matrix
        (drawn from `generator` when given, else from the global RNG)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.weight.requires_grad_(w.requires_grad)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
                layer.bias.requires_grad_(linear.bias.requires_grad)
            if generator is not None:
                std = math.sqrt(2.0 / (linear.in_features + linear.out_features))
                b = torch.randn(w.shape, generator=generator, device=generator.device,
                                dtype=w.dtype)
                layer.b_matrix.copy_(b * std)
        return layer
