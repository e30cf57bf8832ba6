"""Stacked twins: M models' layer at one place as one layer. Parameters keep the layout of the
layer they replace with the model dimension first (a conv's filters, a batch norm's channels:
the models' side by side), so every stacked tensor views as (M, -1).

  FALinear          one `fa_linear_stacked` (a batched GEMM): input (M, N, in), or the models'
                    flattened channels side by side (N, M * in)
  FAConv1d/2d/3d    one grouped `fa_conv` (groups x M): each model's filters see only its own
                    channels, its error goes back through its own B, grouped the same way;
                    input (N, M * C, ...), or (M, N, C, ...) (the network's input)
  nn.BatchNorm2d    one batch norm over M x C channels: every model keeps its own statistics
  nn.Unflatten      (M, N, C*H*W) -> (N, M * C, H, W)

Every rule each model's layer has: "bp" reads W as B at the forward (as FALinear does),
Kolen-Pollack's B is a parameter that gets W's gradient from the op (csrc/common/
feedback_grads.h), the sign rules sync each model's B through a slice that follows
soap_cuda.schedule, DFA records its input on soap_cuda.dfa's tape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import dfa
from .. import feedback as fb
from .. import schedule
from ..conv import FAConv1d, FAConv2d, FAConv3d
from ..feedback_layer import FeedbackLayerMixin
from ..functional import fa_conv
from ..modules import FALinear


def _stack(tensors) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors])


def _cat(tensors) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors])


class ModelSlice:
    """One model's layer inside a stacked layer, as feedback.sync_layers and soap_cuda.schedule
    see an FA layer: views of its W, B and B0 in the source layer's shapes (looked up at each use,
    so they follow the stacked tensors through .to() and load_state_dict), its rule, seed and
    schedule."""

    def __init__(self, stacked: "StackedFeedbackLayer", k: int, source: FeedbackLayerMixin):
        self._stacked, self._k = stacked, k
        self._weight_shape = tuple(source.weight.shape)
        self._b_shape = tuple(source.b_matrix.shape)
        self.feedback = source.feedback
        self.feedback_seed = source.feedback_seed
        self.sync_every, self.sync_at_start = source.sync_every, source.sync_at_start
        self.examples_seen, self.sync_count = source.examples_seen, source.sync_count

    def _view(self, t: torch.Tensor, shape) -> torch.Tensor:
        return t.view(self._stacked.models, *shape)[self._k]

    @property
    def weight(self) -> torch.Tensor:
        return self._view(self._stacked.weight, self._weight_shape)

    @property
    def b_matrix(self) -> torch.Tensor:
        return self._view(self._stacked.b_matrix, self._b_shape)

    @property
    def b_init(self) -> torch.Tensor:
        return self._view(self._stacked.b_init, self._b_shape)

    @property
    def b_init_norm(self) -> torch.Tensor:
        return self._stacked.b_init_norm[self._k]


class StackedFeedbackLayer(nn.Module):
    """What the stacked FA layers share: B (a buffer, or a parameter when a model learns it),
    B0 where a rule needs it, the models' slices and schedules, the bp rule, DFA's tape and the
    backprop override of the alignment probes."""

    def _setup(self, sources: list[FeedbackLayerMixin], concatenated: bool) -> None:
        self.models = len(sources)
        self.rules = [s.feedback for s in sources]
        self.dfa = self.rules[0] == "dfa"
        if any((r == "dfa") != self.dfa for r in self.rules):
            raise ValueError("DFA layers stack only with DFA layers (their B has the network's "
                             f"output size as rows); got rules {self.rules}")
        # a conv's filters side by side along W's first dim; linear layers and DFA B stacked
        gather = _cat if concatenated and not self.dfa else _stack
        b = gather(s.b_matrix for s in sources)
        learns = torch.tensor([r == "kolen_pollack" for r in self.rules], device=b.device)
        if learns.any():
            self.b_matrix = nn.Parameter(b)
            # the stacked optimizers train only these models' slices of B
            self.b_matrix._soap_cuda_models = learns
        else:
            self.register_buffer("b_matrix", b)
        if any(hasattr(s, "b_init") for s in sources):  # rescaled_sign's B0
            self.register_buffer("b_init", gather(getattr(s, "b_init", s.b_matrix)
                                                  for s in sources))
        if any(hasattr(s, "b_init_norm") for s in sources):  # scaled_sign's ||B0||
            self.register_buffer("b_init_norm", torch.stack([
                getattr(s, "b_init_norm", torch.zeros((), dtype=torch.float64,
                                                      device=b.device)).detach()
                for s in sources]))
        self.slices = [ModelSlice(self, k, s) for k, s in enumerate(sources)]
        self.scheduled = [sl for sl in self.slices if schedule.has_schedule(sl)]
        bp = [k for k, r in enumerate(self.rules) if r == "bp"]
        # a buffer (not saved): it follows the layer through .to()
        self.register_buffer("bp_models", torch.tensor(bp, dtype=torch.long, device=b.device)
                             if bp else None, persistent=False)
        self.all_bp = len(bp) == self.models
        # a bp model's own B, which its single layer keeps untouched (the stacked B holds W there)
        self.register_buffer("bp_b_matrix", b.view(self.models, -1)[self.bp_models].clone()
                             if bp else None)
        self._bp_copied = None  # (version of W) when the bp rows of B last took W
        self.feedback_override = None  # "bp": every model's error through W (alignment probes)
        self.schedule_paused = False

    # -- schedule ------------------------------------------------------------------------------
    # a soap_cuda.device_schedule.DeviceSchedule that counts and syncs for the slices (a graphed
    # step's), or None
    _schedule_driver = None

    def _count_batch(self, batch: int) -> None:
        """soap_cuda.schedule for every model's slice, then one sync for those due (unless a
        device schedule drives the slices)."""
        if self.scheduled and schedule.counts(self, True) and self._schedule_driver is None:
            world = schedule.world_size()
            for sl in self.scheduled:
                schedule.record(sl, batch)
            due = [sl for sl in self.scheduled if schedule.advance(sl, batch, world)]
            if due:
                fb.sync_layers(due)

    def _counters_current(self) -> None:
        if self._schedule_driver is not None:  # the device holds the current counts
            self._schedule_driver.write_back()

    def get_extra_state(self):
        self._counters_current()
        return {"examples_seen": [sl.examples_seen for sl in self.slices],
                "sync_count": [sl.sync_count for sl in self.slices],
                "feedback_seed": [sl.feedback_seed for sl in self.slices]}

    def set_extra_state(self, state) -> None:
        for sl, seen, count, seed in zip(self.slices, state["examples_seen"],
                                         state["sync_count"], state["feedback_seed"]):
            sl.examples_seen, sl.sync_count, sl.feedback_seed = int(seen), int(count), int(seed)
        if self._schedule_driver is not None:
            self._schedule_driver.reload()

    # -- the matrix the error goes through -----------------------------------------------------
    def feedback_matrix(self) -> torch.Tensor:
        """B, with W in the bp models' slices (all of W under the backprop override)."""
        weight = self.weight
        if self.feedback_override == "bp" or self.all_bp:
            return weight.detach()
        if self.bp_models is not None and torch.is_grad_enabled():
            self._copy_bp_weights(weight)
        return self.b_matrix

    @torch.no_grad()
    def _copy_bp_weights(self, weight: torch.Tensor) -> None:
        # In place and only when W moved: a copy of the bp rows alone (not all of B) per step,
        # and no version bump of a B that a graph not yet backpropagated saved. A compiled
        # graph copies every time: it cannot see a version counter (it would keep the one it
        # was traced with, and never copy again).
        own = weight is self._parameters.get("weight") and not torch.compiler.is_compiling()
        if own and self._bp_copied == weight._version:
            return
        b, w = self.b_matrix.view(self.models, -1), weight.view(self.models, -1)
        b.index_copy_(0, self.bp_models, w.index_select(0, self.bp_models))
        self._bp_copied = weight._version if own else None

    def _with_bp_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A copy of B (detached) whose bp models' rows are `rows` (n_bp, -1)."""
        b = self.b_matrix.detach()
        return b.reshape(self.models, -1).index_copy(0, self.bp_models, rows).view_as(b)

    def effective_feedback(self) -> torch.Tensor:
        """What the error of each model goes through now (W for bp models), without side
        effects: the alignment metrics."""
        if self.all_bp:
            return self.weight.detach()
        if self.bp_models is None:
            return self.b_matrix.detach()
        return self._with_bp_rows(
            self.weight.detach().reshape(self.models, -1).index_select(0, self.bp_models))

    def own_feedback(self) -> torch.Tensor:
        """Each model's own B (the bp models' untouched one), model-major, detached."""
        if self.bp_models is None:
            return self.b_matrix.detach()
        return self._with_bp_rows(self.bp_b_matrix)

    def _compute(self, x: torch.Tensor, fa, layout: str) -> torch.Tensor:
        """fa(input, B); under DFA the input is detached (its error comes from the network's
        output error) and recorded on the tape."""
        if self.dfa and self.feedback_override is None:
            if not torch.is_grad_enabled():
                return fa(x, self.weight.detach())
            out = fa(x.detach(), self.weight.detach())
            dfa.record(self, x, out, layout)
            return out
        return fa(x, self.feedback_matrix())

    def freeze_model(self, k: int) -> None:
        """Zeros in model k's slices of W, bias and B."""
        with torch.no_grad():
            for t in (self.weight, self.bias, self.b_matrix):
                if t is not None:
                    t.view(self.models, -1)[k].zero_()

    def model_state(self, k: int) -> dict:
        """Model k's layer state_dict, in its source layer's keys and shapes."""
        self._counters_current()
        sl = self.slices[k]
        state = {"weight": sl.weight.detach()}
        if self.bias is not None:
            state["bias"] = self.bias.detach().view(self.models, -1)[k]
        state["b_matrix"] = self.own_feedback().view(self.models, *sl._b_shape)[k]
        if sl.feedback == "rescaled_sign":
            state["b_init"] = sl.b_init
        if sl.feedback == "scaled_sign":
            state["b_init_norm"] = sl.b_init_norm
        state["_extra_state"] = {"examples_seen": sl.examples_seen,
                                 "sync_count": sl.sync_count, "feedback_seed": sl.feedback_seed}
        return state


class StackedLinear(StackedFeedbackLayer):
    def __init__(self, layers: list[FALinear]):
        super().__init__()
        self.weight = nn.Parameter(_stack(layer.weight for layer in layers))
        self.bias = None if layers[0].bias is None else nn.Parameter(
            _stack(layer.bias for layer in layers))
        self._setup(layers, concatenated=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        models_first = x.dim() == 3
        self._count_batch(x.shape[1] if models_first else x.shape[0])
        if models_first and x.stride(0) == 0 and not x.requires_grad and not (
                self.b_matrix.requires_grad and torch.is_grad_enabled()):
            return self._shared_input(x[0])  # no input gradient, so B plays no part
        layout = dfa.MODELS_FIRST if models_first else dfa.CHANNELS

        def fa(x, b):
            if x.dim() == 2:  # flattened channels side by side: model-major
                x = x.view(x.shape[0], self.models, -1).transpose(0, 1)
            return torch.ops.soap_cuda.fa_linear_stacked(x.contiguous(), self.weight, self.bias,
                                                         b)
        return self._compute(x, fa, layout)

    def _shared_input(self, x: torch.Tensor) -> torch.Tensor:
        """One input (N, in) for every model (no gradient to it): the models' rows of W side by
        side make one (N, in) x (in, M * out) GEMM, without materialising the copies."""
        m, out, k = self.weight.shape
        w = self.weight.reshape(m * out, k)
        y = x @ w.t() if self.bias is None else torch.addmm(self.bias.reshape(m * out), x, w.t())
        return y.view(x.shape[0], m, out).transpose(0, 1)

    def per_model_output(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.models, -1)


class StackedConv(StackedFeedbackLayer):
    def __init__(self, layers: list[FeedbackLayerMixin]):
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ValueError("stacked conv layers take zero padding given in numbers")
        self.weight = nn.Parameter(_cat(layer.weight for layer in layers))
        self.bias = None if first.bias is None else nn.Parameter(
            _cat(layer.bias for layer in layers))
        self._setup(layers, concatenated=True)
        self.stride, self.padding = list(first.stride), list(first.padding)
        self.dilation, self.groups = list(first.dilation), first.groups * len(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.weight.dim() + 1:  # the network's input (M, N, C, ...): side by side
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        self._count_batch(x.shape[0])
        return self._compute(x, lambda x, b: fa_conv(
            x, self.weight, self.bias, b, self.stride, self.padding, self.dilation,
            self.groups), dfa.CHANNELS)

    def per_model_output(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], self.models, -1).transpose(0, 1).reshape(self.models, -1)


class StackedBatchNorm(nn.Module):
    """nn.BatchNorm2d's training and evaluation arithmetic over the M x C stacked channels,
    each model's statistics (and its count of batches) its own."""

    def __init__(self, norms: list[nn.BatchNorm2d]):
        super().__init__()
        first = norms[0]
        if not (first.affine and first.track_running_stats and first.momentum is not None):
            raise ValueError("stacked batch norm takes affine layers with running statistics")
        self.models, self.eps, self.momentum = len(norms), first.eps, first.momentum
        self.weight = nn.Parameter(_cat(n.weight for n in norms))
        self.bias = nn.Parameter(_cat(n.bias for n in norms))
        self.register_buffer("running_mean", _cat(n.running_mean for n in norms))
        self.register_buffer("running_var", _cat(n.running_var for n in norms))
        self.register_buffer("num_batches_tracked", _stack(n.num_batches_tracked for n in norms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)

    def freeze_model(self, k: int) -> None:
        """Model k: zero affine parameters, zero means and unit variances."""
        with torch.no_grad():
            for t in (self.weight, self.bias, self.running_mean):
                t.view(self.models, -1)[k].zero_()
            self.running_var.view(self.models, -1)[k].fill_(1.0)

    def model_state(self, k: int) -> dict:
        state = {key: getattr(self, key).detach().view(self.models, -1)[k]
                 for key in ("weight", "bias", "running_mean", "running_var")}
        state["num_batches_tracked"] = self.num_batches_tracked[k]
        return state


class StackedUnflatten(nn.Module):
    """Flat inputs (M, N, C * spatial) per model to the models' channels side by side."""

    def __init__(self, unflatten: nn.Unflatten, models: int):
        super().__init__()
        if unflatten.dim not in (1, -1):
            raise ValueError("a stacked nn.Unflatten unflattens the features (dim 1)")
        self.shape, self.models = tuple(unflatten.unflattened_size), models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n = x.shape[:2]
        return x.reshape(m, n, *self.shape).transpose(0, 1).reshape(n, m * self.shape[0],
                                                                    *self.shape[1:])


# Modules that compute per channel or per element, or only hold others: they run as they are on
# stacked tensors. soap_cuda.stacked.register adds a model's own.
PASS_THROUGH: set[type] = {
    nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten, nn.Dropout,
    nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus,
    nn.Hardtanh, nn.ReLU6, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d}
# type -> factory(list of the models' modules) -> the stacked module
TWINS: dict[type, object] = {
    FALinear: StackedLinear, FAConv1d: StackedConv, FAConv2d: StackedConv,
    FAConv3d: StackedConv, nn.BatchNorm2d: StackedBatchNorm,
    nn.Unflatten: lambda mods: StackedUnflatten(mods[0], len(mods))}


def stacked_twin(modules: list[nn.Module]) -> nn.Module | None:
    """The stacked replacement of the M models' module at one place; None keeps it as it is."""
    kind = type(modules[0])
    if any(type(m) is not kind for m in modules):
        raise ValueError(f"the models differ here: {sorted({type(m).__name__ for m in modules})}")
    if kind in TWINS:
        return TWINS[kind](modules)
    if kind in PASS_THROUGH:
        if kind is nn.Dropout and modules[0].p > 0:
            raise ValueError("nn.Dropout with p > 0 draws one mask for the stack, not one per "
                             "model as separate runs do")
        return None
    if isinstance(modules[0], (nn.Linear, nn.modules.conv._ConvNd)):
        raise ValueError(f"{kind.__name__} has no stacked form: convert it to a feedback "
                         "layer first (soap_cuda.convert(model, feedback='bp') for backprop)")
    raise ValueError(f"{kind.__name__} has no stacked form; soap_cuda.stacked.register("
                     f"{kind.__name__}) if it computes per channel (or give it a twin)")
