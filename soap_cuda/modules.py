"""FALinear: a drop-in for nn.Linear (and the seed's FALinear) trained by feedback alignment."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from . import feedback as fb
from .functional import fa_linear

_EXTRA_KEYS = ("b_init", "b_init_norm", "_extra_state")


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class FALinear(nn.Module):
    """Linear layer whose backward sends the error through a feedback matrix `b_matrix`.

    Forward is exactly `nn.Linear`'s: `y = x @ weight.T + bias`, for x of shape (..., in).
    Backward: `grad_x = grad_y @ b_matrix` (instead of `@ weight`); weight and bias get their
    usual gradients. `b_matrix` has weight's shape (out, in) and is a buffer, not a parameter.

    Initialisation follows the seed: xavier-normal `b_matrix`, then xavier-normal `weight`, then
    a zero bias, drawing from the RNG in the seed's order, so the same torch seed gives the same
    layer as the seed's class (and its state_dict loads here, strict).

    Feedback rules (`feedback=`, see `soap_cuda.feedback`): "fa" (fixed B, default), "sign",
    "rescaled_sign", "scaled_sign", "random_sign", "bp". With a sync rule and `sync_every=T`,
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
                 sync_at_start: bool = False, feedback_seed: int | None = None) -> None:
        super().__init__()
        fb.check_rule(feedback, sync_every)
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.feedback = feedback
        self.sync_every = sync_every
        self.sync_at_start = sync_at_start
        self.examples_seen = 0
        self.sync_count = 0
        self.schedule_paused = False
        self.feedback_override = None  # "bp" inside soap_cuda.feedback.backprop_mode()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("b_matrix", torch.empty(out_features, in_features, **factory))
        if feedback == "rescaled_sign":
            self.register_buffer("b_init", torch.empty(out_features, in_features, **factory))
        if feedback == "scaled_sign":
            self.register_buffer("b_init_norm",
                                 torch.zeros((), dtype=torch.float64, device=device))
        self.reset_parameters()
        if feedback_seed is None and feedback == "random_sign":
            feedback_seed = int(torch.randint(0, 2**62, ()).item())
        self.feedback_seed = feedback_seed if feedback_seed is not None else 0

    def reset_parameters(self) -> None:
        init.xavier_normal_(self.b_matrix)
        init.xavier_normal_(self.weight)
        if self.bias is not None:
            # uniform_(0, 0) rather than zeros_: it consumes the RNG as the seed's class does.
            init.uniform_(self.bias, 0.0, 0.0)
        self._record_initial_feedback()
        self.examples_seen = 0
        self.sync_count = 0

    def _record_initial_feedback(self) -> None:
        with torch.no_grad():
            if hasattr(self, "b_init"):
                self.b_init.copy_(self.b_matrix)
            if hasattr(self, "b_init_norm"):
                self.b_init_norm.copy_(self.b_matrix.double().norm())

    @property
    def feedback_matrix(self) -> Tensor:
        """The matrix the error goes through: W under "bp", else b_matrix."""
        rule = self.feedback_override or self.feedback
        return self.weight.detach() if rule == "bp" else self.b_matrix

    def forward(self, input: Tensor) -> Tensor:
        if self.training and (self.sync_every is not None or self.sync_at_start) \
                and not self.schedule_paused and torch.is_grad_enabled():
            self._advance_schedule(input.shape[0] if input.dim() > 1 else 1)
        # The dicts directly: nn.Module.__getattr__ costs ~0.5 us a call on this hot path. A
        # parametrized or weight-normed layer keeps weight/bias elsewhere: the attribute finds it.
        params = self._parameters
        weight = params.get("weight")
        if weight is None:
            weight = self.weight
        bias = params["bias"] if "bias" in params else self.bias
        if self.feedback_override is None and self.feedback != "bp":  # the common case, first
            return fa_linear(input, weight, bias, self._buffers["b_matrix"])
        return fa_linear(input, weight, bias, self.feedback_matrix)

    @torch.compiler.disable
    def _advance_schedule(self, batch: int) -> None:
        before = self.examples_seen
        self.examples_seen = before + batch * _world_size()
        first = self.sync_at_start and before == 0 and self.sync_count == 0
        crossed = self.sync_every is not None and \
            self.examples_seen // self.sync_every > before // self.sync_every
        if first or crossed:
            self.sync_now()

    def sync_now(self) -> None:
        """Apply the feedback rule now (B from the current W)."""
        fb.sync_layers([self])

    # -- state ---------------------------------------------------------------------------------
    def get_extra_state(self):
        return {"examples_seen": self.examples_seen, "sync_count": self.sync_count,
                "feedback_seed": self.feedback_seed}

    def set_extra_state(self, state) -> None:
        self.examples_seen = int(state["examples_seen"])
        self.sync_count = int(state["sync_count"])
        self.feedback_seed = int(state["feedback_seed"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A state_dict from the seed's FALinear (or nn.Linear + b_matrix) lacks our extras:
        # start a fresh schedule and take B0 from the loaded b_matrix.
        own = [k for k in _EXTRA_KEYS if k == "_extra_state" or hasattr(self, k)]
        absent = [k for k in own if prefix + k not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        for key in absent:
            if prefix + key in missing_keys:
                missing_keys.remove(prefix + key)
        if "_extra_state" in absent:
            self.examples_seen = self.sync_count = 0
        if "b_init" in absent or "b_init_norm" in absent:
            self._record_initial_feedback()

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
        if self.feedback != "fa":
            text += f", feedback={self.feedback!r}"
        if self.sync_every is not None:
            text += f", sync_every={self.sync_every}"
        return text

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
                layer._record_initial_feedback()
        return layer
