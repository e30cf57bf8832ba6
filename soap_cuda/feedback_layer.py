"""What every feedback-alignment layer shares (FALinear, FAConv1d/2d/3d): the feedback buffers
(b_matrix of the weight's shape, and B0 where the rule needs it), the example counter and sync
schedule, exact resume through the state_dict, and the rule override of backprop_mode()."""
from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor
from torch.nn import init

from . import dfa
from . import feedback as fb
from . import schedule

_EXTRA_KEYS = ("b_init", "b_init_norm", "_extra_state")


def _compiler_disabled(fn):
    """`torch.compiler.disable(fn)` (a compiled model runs the schedule eagerly, outside its
    graphs) without importing torch._dynamo: that import costs seconds, and a model that is
    never compiled has no use for it. Until something has imported torch._dynamo nothing can
    be compiling, so the plain function runs; after, torch's lazily disabled twin does."""
    disabled = getattr(torch, "_disable_dynamo", torch.compiler.disable)(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)
    return call


class FeedbackLayerMixin:
    """Mixed into an nn.Module that has `weight` (and optionally `bias`) parameters."""

    # the soap_cuda.device_schedule.DeviceSchedule that counts and syncs for this layer (a
    # graphed step's), or None: the layer counts its own batches
    _schedule_driver = None

    def _configure_feedback(self, feedback: str, sync_every, sync_at_start: bool,
                            dfa_outputs=None, dfa_input_shape=None) -> None:
        fb.check_rule(feedback, sync_every)
        if feedback != "dfa" and (dfa_outputs is not None or dfa_input_shape is not None):
            raise ValueError(f"dfa_outputs and dfa_input_shape are for feedback='dfa', not "
                             f"{feedback!r}")
        self.feedback = feedback
        self.sync_every = sync_every
        self.sync_at_start = sync_at_start
        self.examples_seen = 0
        self.sync_count = 0
        self.schedule_paused = False
        self.feedback_override = None  # "bp" inside soap_cuda.feedback.backprop_mode()
        # the hot path reads a buffer B straight from _buffers (not under bp, Kolen-Pollack, DFA)
        self._b_in_buffers = feedback not in ("bp", "kolen_pollack", "dfa")

    def _register_feedback_buffers(self, shape, factory) -> None:
        if self.feedback == "kolen_pollack":
            # a parameter: optimizers built from model.parameters() update it, with W's gradient
            self.b_matrix = torch.nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_buffer("b_matrix", torch.empty(shape, **factory))
        if self.feedback == "rescaled_sign":
            self.register_buffer("b_init", torch.empty(shape, **factory))
        if self.feedback == "scaled_sign":
            self.register_buffer("b_init_norm",
                                 torch.zeros((), dtype=torch.float64, device=factory["device"]))

    def _set_feedback_seed(self, feedback_seed) -> None:
        if feedback_seed is None and self.feedback == "random_sign":
            feedback_seed = int(torch.randint(0, 2**62, ()).item())
        self.feedback_seed = feedback_seed if feedback_seed is not None else 0

    def _reset_feedback(self) -> None:
        """A fresh xavier-normal B (and B0), and a fresh schedule."""
        init.xavier_normal_(self.b_matrix)
        self._record_initial_feedback()
        self.examples_seen = 0
        self.sync_count = 0

    def _record_initial_feedback(self) -> None:
        with torch.no_grad():
            if hasattr(self, "b_init"):
                self.b_init.copy_(self.b_matrix)
            if hasattr(self, "b_init_norm"):
                self.b_init_norm.copy_(self.b_matrix.double().norm())

    def _take_weights(self, layer, generator: torch.Generator | None) -> None:
        """Copy `layer`'s weight and bias (and whether they train) into this FA twin; draw B
        from `generator` when given (else the fresh B from the global RNG stays)."""
        with torch.no_grad():
            for name in ("weight", "bias"):
                source = getattr(layer, name)
                if source is not None:
                    target = getattr(self, name)
                    target.copy_(source)
                    target.requires_grad_(source.requires_grad)
        if generator is not None:
            self._draw_feedback(generator)

    def _draw_feedback(self, generator: torch.Generator) -> None:
        """B from `generator` (xavier-normal), for reproducible conversions."""
        w = self.weight
        std = dfa.xavier_std(self.b_matrix) if self.feedback == "dfa" else fb.xavier_std(self)
        b = torch.randn(self.b_matrix.shape, generator=generator, device=generator.device,
                        dtype=w.dtype)
        with torch.no_grad():
            self.b_matrix.copy_(b * std)
        self._record_initial_feedback()

    def _dfa_forward(self, input: Tensor, compute) -> Tensor:
        """Under DFA: the layer's output from a detached input (autograd computes no grad_input
        here; dfa.py delivers it from the network's output error), recorded on the tape."""
        if not torch.is_grad_enabled():
            return compute(input)
        output = compute(input.detach())
        dfa.record(self, input, output)
        return output

    @property
    def feedback_matrix(self) -> Tensor:
        """The matrix the error goes through: W under "bp", else b_matrix."""
        rule = self.feedback_override or self.feedback
        return self.weight.detach() if rule == "bp" else self.b_matrix

    def _count_batch(self, input: Tensor, batched_dim: int) -> None:
        """The schedule's step of a forward pass (`batched_dim`: the input's rank when it
        carries a batch; otherwise it is one example). A layer driven by a device schedule
        (soap_cuda.graphed) leaves counting and syncing to it, or, driven from the forward
        (schedule_on_device), hands it the batch."""
        if not schedule.counts(self, schedule.has_schedule(self)):
            return
        batch = input.shape[0] if input.dim() >= batched_dim else 1
        driver = self._schedule_driver
        if driver is None:
            schedule.record(self, batch)
            self._advance_schedule(batch)
        elif driver.in_forward:  # soap_cuda.schedule_on_device: tensor code, compiles
            driver.count(self, batch)

    @_compiler_disabled
    def _advance_schedule(self, batch: int) -> None:
        if schedule.advance(self, batch):
            self.sync_now()

    def sync_now(self) -> None:
        """Apply the feedback rule now (B from the current W)."""
        fb.plan_for(self, [self]).run()

    def _feedback_repr(self) -> str:
        text = f", feedback={self.feedback!r}" if self.feedback != "fa" else ""
        if self.sync_every is not None:
            text += f", sync_every={self.sync_every}"
        return text

    # -- state ---------------------------------------------------------------------------------
    def get_extra_state(self):
        if self._schedule_driver is not None:  # its device counters are the current ones
            self._schedule_driver.write_back()
        return {"examples_seen": self.examples_seen, "sync_count": self.sync_count,
                "feedback_seed": self.feedback_seed}

    def set_extra_state(self, state) -> None:
        self.examples_seen = int(state["examples_seen"])
        self.sync_count = int(state["sync_count"])
        self.feedback_seed = int(state["feedback_seed"])
        if self._schedule_driver is not None:
            self._schedule_driver.reload()

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
            if self._schedule_driver is not None:
                self._schedule_driver.reload()
        if "b_init" in absent or "b_init_norm" in absent:
            self._record_initial_feedback()
