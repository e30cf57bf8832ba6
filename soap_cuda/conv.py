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

_fa_conv_op = torch.ops.soap_cuda.fa_conv.default
# what the op's geometry is computed from (conv.py's _compute_geometry)
_GEOMETRY_ATTRIBUTES = frozenset(("stride", "padding", "dilation", "groups", "padding_mode",
                                  "kernel_size", "_reversed_padding_repeated_twice"))


class _FAConvNd(FeedbackLayerMixin):
    _torch_class: type = nn.Module  # nn.Conv1d / 2d / 3d
    _geometry = None  # the op's geometry, once computed (_compute_geometry)

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

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _GEOMETRY_ATTRIBUTES:  # nn.Conv reads them every call: honour a change
            self.__dict__["_geometry"] = None

    def _compute_geometry(self):
        """(pre-padding as F.pad's arguments or None, stride, padding, dilation, groups): what
        every forward passes to the op, computed once (again only after a geometry attribute
        is set). Non-zero padding modes pad first, then convolve without padding, as nn.Conv
        does; so does the asymmetric side of "same" with an even kernel (the extra zero goes
        right, as ATen pads it)."""
        spatial = len(self.kernel_size)
        pads = self._reversed_padding_repeated_twice
        pre_pad, padding = None, list(self.padding) if not isinstance(self.padding, str) else None
        if self.padding_mode != "zeros":
            pre_pad, padding = (pads, self.padding_mode), [0] * spatial
        elif padding is None:  # "same" / "valid": left and right per dim
            left = [pads[2 * (spatial - 1 - d)] for d in range(spatial)]
            right = [pads[2 * (spatial - 1 - d) + 1] for d in range(spatial)]
            padding = left if left == right else [0] * spatial
            if left != right:
                pre_pad = (pads, "constant")
        geometry = (pre_pad, list(self.stride), padding, list(self.dilation), self.groups)
        self.__dict__["_geometry"] = geometry
        return geometry

    def forward(self, input: Tensor) -> Tensor:
        # FALinear's hot path: parameters and B from the module's dicts (nn.Module.__getattr__
        # costs ~0.5 us a call), the geometry from its cache.
        self._count_batch(input, len(self.kernel_size) + 2)
        params = self._parameters
        weight = params.get("weight")
        if weight is None:  # parametrized: the attribute finds it
            weight = self.weight
        bias = params["bias"] if "bias" in params else self.bias
        if self.feedback_override is None and self._b_in_buffers:  # the common case, first
            b_matrix = self._buffers["b_matrix"]
        elif self.feedback_override is None and self.feedback == "dfa":
            return self._dfa_forward(
                input, lambda x: self._torch_class._conv_forward(self, x, weight, bias))
        else:
            b_matrix = self.feedback_matrix
        pre_pad, stride, padding, dilation, groups = self._geometry or self._compute_geometry()
        if pre_pad is not None:
            input = F.pad(input, *pre_pad)
        if input.dim() == len(stride) + 1:  # unbatched, as nn.Conv takes it
            return _fa_conv_op(input.unsqueeze(0), weight, bias, b_matrix, stride, padding,
                               dilation, groups).squeeze(0)
        return _fa_conv_op(input, weight, bias, b_matrix, stride, padding, dilation, groups)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """nn.Conv's hook, with the FA rule: the forward above for given weight and bias."""
        pre_pad, stride, padding, dilation, groups = self._geometry or self._compute_geometry()
        if pre_pad is not None:
            input = F.pad(input, *pre_pad)
        return fa_conv(input, weight, bias, self.feedback_matrix, stride, padding, dilation,
                       groups)

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
