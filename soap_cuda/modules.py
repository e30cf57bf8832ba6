"""FALinear: a drop-in for nn.Linear (and the seed's FALinear) trained by feedback alignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from . import dfa
from .feedback_layer import FeedbackLayerMixin
from .functional import fa_linear


class FALinear(FeedbackLayerMixin, nn.Module):
    """Linear layer whose backward sends the error through a feedback matrix `b_matrix`.

    Forward is exactly `nn.Linear`'s: `y = x @ weight.T + bias`, for x of shape (..., in).
    Backward: `grad_x = grad_y @ b_matrix` (instead of `@ weight`); weight and bias get their
    usual gradients. `b_matrix` has weight's shape (out, in) and is a buffer, not a parameter.

    Initialisation follows the seed: xavier-normal `b_matrix`, then xavier-normal `weight`, then
    a zero bias, drawing from the RNG in the seed's order, so the same torch seed gives the same
    layer as the seed's class (and its state_dict loads here, strict).

    Feedback rules (`feedback=`, see `soap_cuda.feedback`): "fa" (fixed B, default), "sign",
    "rescaled_sign", "scaled_sign", "random_sign", "bp", "kolen_pollack" (B is then a
    parameter that receives W's gradient), "dfa" (direct feedback alignment: B has shape
    (dfa_outputs, in_features), dfa_outputs the network's output size; see soap_cuda.dfa). With a sync rule and `sync_every=T`,
    B is synced from W each time the count of training examples reaches a multiple of T: a
    forward pass in training mode with grad enabled counts its leading dimension (the batch;
    one example for 1-D input; times the world size under torch.distributed, so T counts
    global examples) and, if the count crossed a multiple of T, syncs before computing, so
    that batch's backward already uses the new B. The first sync is at T, or at the first
    counted batch with `sync_at_start=True`. The count, the number of syncs and the
    random_sign seed are saved in the state_dict; B0 too where the rule needs it.
    """

    __constants__ = ["in_features", "out_features"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, *, feedback: str = "fa", sync_every: int | None = None,
                 sync_at_start: bool = False, feedback_seed: int | None = None,
                 dfa_outputs: int | None = None) -> None:
        super().__init__()
        self._configure_feedback(feedback, sync_every, sync_at_start, dfa_outputs)
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._register_feedback_buffers(
            dfa.dfa_shape(self, dfa_outputs) if feedback == "dfa" else (out_features, in_features),
            factory)
        self.reset_parameters()
        self._set_feedback_seed(feedback_seed)

    def reset_parameters(self) -> None:
        # The seed's order: B, then W, then the bias, from the same RNG.
        init.xavier_normal_(self.b_matrix)
        init.xavier_normal_(self.weight)
        if self.bias is not None:
            # uniform_(0, 0) rather than zeros_: it consumes the RNG as the seed's class does.
            init.uniform_(self.bias, 0.0, 0.0)
        self._record_initial_feedback()
        self.examples_seen = 0
        self.sync_count = 0

    def forward(self, input: Tensor) -> Tensor:
        self._count_batch(input, 2)
        # The dicts directly: nn.Module.__getattr__ costs ~0.5 us a call on this hot path. A
        # parametrized or weight-normed layer keeps weight/bias elsewhere: the attribute finds it.
        params = self._parameters
        weight = params.get("weight")
        if weight is None:
            weight = self.weight
        bias = params["bias"] if "bias" in params else self.bias
        if self.feedback_override is None and self._b_in_buffers:  # the common case, first
            return fa_linear(input, weight, bias, self._buffers["b_matrix"])
        if self.feedback_override is None and self.feedback == "dfa":
            return self._dfa_forward(input, lambda x: F.linear(x, weight, bias))
        return fa_linear(input, weight, bias, self.feedback_matrix)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}") + self._feedback_repr()

    @classmethod
    def from_linear(cls, linear: nn.Linear, generator: torch.Generator | None = None,
                    **kwargs) -> "FALinear":
        """An FALinear holding `linear`'s weights, with a fresh xavier-normal feedback matrix
        (drawn from `generator` when given, else from the global RNG)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, **kwargs)
        layer._take_weights(linear, generator)
        return layer
