"""FAConv1d, FAConv2d, FAConv3d: drop-ins for nn.Conv1d/2d/3d trained by feedback alignment.

Each is its torch layer (same constructor, parameters, initialisation and forward: every padding
mode, padding="same"/"valid", stride, dilation and groups) plus a feedback filter bank
`b_matrix` of the weight's shape. Backward: grad_input is the transposed convolution of
grad_output with B (what nn.Conv computes with W); weight and bias gradients as usual. The
feedback rules, schedule and state are FALinear's (`soap_cuda.feedback_layer`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dfa
from .feedback_layer import FeedbackLayerMixin
from .functional import fa_conv


class _FAConvNd(FeedbackLayerMixin):
    _torch_class: type = nn.Module  # nn.Conv1d / 2d / 3d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, feedback: str = "fa", sync_every: int | None = None,
                 sync_at_start: bool = False, feedback_seed: int | None = None,
                 dfa_outputs: int | None = None, dfa_input_shape=None) -> None:
        self._torch_class.__init__(self, in_channels, out_channels, kernel_size, stride,
                                   padding, dilation, groups, bias, padding_mode, device, dtype)
        self._configure_feedback(feedback, sync_every, sync_at_start, dfa_outputs,
                                 dfa_input_shape)
        shape = dfa.dfa_shape(self, dfa_outputs, dfa_input_shape) if feedback == "dfa" \
            else self.weight.shape
        self._register_feedback_buffers(shape, {"device": device, "dtype": dtype})
        self._reset_feedback()
        self._set_feedback_seed(feedback_seed)

    def reset_parameters(self) -> None:
        # nn.Conv's own initialisation of W and the bias, then (once it exists) a fresh B.
        self._torch_class.reset_parameters(self)
        if "b_matrix" in self._buffers:
            self._reset_feedback()

    def forward(self, input: Tensor) -> Tensor:
        if self._schedule_runs():
            self._advance_schedule(input.shape[0] if input.dim() == self.weight.dim() else 1)
        if self.feedback == "dfa" and self.feedback_override is None:
            return self._dfa_forward(
                input, lambda x: self._torch_class._conv_forward(self, x, self.weight, self.bias))
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        spatial = weight.dim() - 2
        if self.padding_mode != "zeros":  # as nn.Conv: pad by the mode, then no padding
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = [0] * spatial
        elif isinstance(self.padding, str):  # "same" / "valid": left and right per dim
            pads = self._reversed_padding_repeated_twice
            left = [pads[2 * (spatial - 1 - d)] for d in range(spatial)]
            right = [pads[2 * (spatial - 1 - d) + 1] for d in range(spatial)]
            if left == right:
                padding = left
            else:  # an even kernel under "same": the extra zero goes right, as ATen pads it
                input = F.pad(input, pads)
                padding = [0] * spatial
        else:
            padding = list(self.padding)
        return fa_conv(input, weight, bias, self.feedback_matrix, list(self.stride), padding,
                       list(self.dilation), self.groups)

    def extra_repr(self) -> str:
        return self._torch_class.extra_repr(self) + self._feedback_repr()

    @classmethod
    def from_conv(cls, conv, generator: torch.Generator | None = None, **kwargs):
        """An FAConv holding `conv`'s weights, with a fresh xavier-normal feedback filter bank
        (drawn from `generator` when given, else from the global RNG)."""
        w = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=w.device, dtype=w.dtype, **kwargs)
        layer._take_weights(conv, generator)
        return layer


class FAConv1d(_FAConvNd, nn.Conv1d):
    """nn.Conv1d trained by feedback alignment (see the module docstring)."""
    _torch_class = nn.Conv1d


class FAConv2d(_FAConvNd, nn.Conv2d):
    """nn.Conv2d trained by feedback alignment (see the module docstring)."""
    _torch_class = nn.Conv2d


class FAConv3d(_FAConvNd, nn.Conv3d):
    """nn.Conv3d trained by feedback alignment (see the module docstring)."""
    _torch_class = nn.Conv3d
