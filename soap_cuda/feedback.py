"""Feedback rules: how (and when) the feedback matrix B of each FALinear follows its weights.

Rules (the `feedback=` option of FALinear):
  "fa"             B fixed at its random init (Lillicrap et al.; the seed's FA)
  "sign"           B <- sign(W)                 (the seed's naive sync; changes B's scale)
  "rescaled_sign"  B <- |B0| * sign(W)          (the seed's corrected rule, BioTorch's frSF)
  "scaled_sign"    B <- s * sign(W), s so that ||B||_F = ||B0||_F   (uSF-style)
  "random_sign"    B <- |M| * sign(W), M ~ N(0, std(B0)^2) redrawn each sync (brSF), from the
                   Philox stream (feedback_seed, sync_count)
  "bp"             B is W itself (exact backprop through the same code path: the baseline)
  "kolen_pollack"  B is a parameter that receives W's gradient, so it gets the same updates as
                   W (and its own weight decay): B - W decays and B converges towards W without
                   weight transport (Akrout et al. 2019)
  "dfa"            direct feedback alignment (Nokland 2016): the layer's input error is e @ B,
                   e the network's output error and B (out, k) fixed; see soap_cuda.dfa
sign(0) = 0 (as torch.sign), and a NaN weight gives a NaN feedback entry (it is not hidden).

`sync_every=T` counts training examples; see FALinear. `sync_feedback(model)` syncs every
sync-rule layer of a model now (FALinear and FAConv layers together), with one native call per
(device, dtype) group.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch
from torch import nn

FEEDBACK_RULES = ("fa", "sign", "rescaled_sign", "scaled_sign", "random_sign", "bp",
                  "kolen_pollack", "dfa")
SYNC_RULES = ("sign", "rescaled_sign", "scaled_sign", "random_sign")


def check_rule(feedback: str, sync_every) -> None:
    if feedback not in FEEDBACK_RULES:
        raise ValueError(f"feedback must be one of {FEEDBACK_RULES}, got {feedback!r}")
    if sync_every is not None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every <= 0:
            raise ValueError(f"sync_every must be a positive number of examples or None, got "
                             f"{sync_every!r}")
        if feedback not in SYNC_RULES:
            raise ValueError(f"sync_every={sync_every} has no effect with feedback={feedback!r}; "
                             f"sync rules are {SYNC_RULES}")


def xavier_std(layer) -> float:
    """xavier-normal's std for the layer's weight: sqrt(2 / (fan_in + fan_out)), where a conv
    layer's fans count its receptive field (in * kernel, out * kernel)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def stream_seed(feedback_seed: int) -> int:
    """A feedback seed as the int64 the sync op's streams hold (its 64 bits, two's complement)."""
    bits = int(feedback_seed) & ((1 << 64) - 1)
    return bits - (1 << 64) if bits >= 1 << 63 else bits


def sync_arguments(layer):
    """(weight, b_matrix, magnitude or None, scale, stream or None) for one layer: the scale is
    a Python float, or a 0-d float64 tensor on the weight's device where it depends on W
    (scaled_sign); random_sign's |M| is drawn in the op from the Philox stream
    (feedback_seed, sync_count), so M is fresh each sync and reproducible from the seed."""
    w = layer.weight.detach()
    rule = layer.feedback
    if rule == "sign":
        return w, layer.b_matrix, None, 1.0, None
    if rule == "rescaled_sign":
        return w, layer.b_matrix, layer.b_init, 1.0, None
    if rule == "random_sign":
        return w, layer.b_matrix, None, xavier_std(layer), \
            (1, stream_seed(layer.feedback_seed), layer.sync_count)
    if rule == "scaled_sign":
        return w, layer.b_matrix, None, scaled_sign_scale(w, layer.b_init_norm), None
    raise ValueError(f"feedback rule {rule!r} has no sync")


def scaled_sign_scale(w: torch.Tensor, b_init_norm: torch.Tensor) -> torch.Tensor:
    """scaled_sign's s = ||B0|| / sqrt(count of nonzero W), so that ||s sign(W)|| = ||B0||."""
    nonzero = torch.count_nonzero(w).to(torch.float64).clamp_min(1.0)
    return b_init_norm / nonzero.sqrt()


def _scales_tensor(scales, device) -> torch.Tensor:
    """The op's scales: on the CPU when all are known on the host (the CUDA kernel then takes
    them with its per-call values, with no device tensor to build), else stacked on the device."""
    if all(isinstance(s, float) for s in scales):
        return torch.tensor(scales, dtype=torch.float64)
    return torch.stack([s if isinstance(s, torch.Tensor)
                        else torch.full((), s, dtype=torch.float64, device=device)
                        for s in scales])


def sync_layers(layers) -> int:
    """Sync the given FA layers now: one native feedback_sync_ call per device/dtype."""
    groups = defaultdict(list)
    for layer in layers:
        if layer.feedback in SYNC_RULES:
            groups[(layer.weight.device, layer.weight.dtype)].append(layer)
    with torch.no_grad():
        for group in groups.values():
            args = [sync_arguments(layer) for layer in group]
            weights, b_matrices, magnitudes, scales, streams = (list(col) for col in zip(*args))
            weights = [w.contiguous() for w in weights]
            magnitudes = [m.contiguous() if m is not None else None for m in magnitudes]
            # a channels_last conv layer's B is not contiguous: sync into a copy, write it back
            targets = [b if b.is_contiguous() else b.contiguous() for b in b_matrices]
            torch.ops.soap_cuda.feedback_sync_(weights, targets, magnitudes,
                                               _scales_tensor(scales, weights[0].device),
                                               None, _stream_rows(group, streams))
            for b, target in zip(b_matrices, targets):
                if target is not b:
                    b.copy_(target)
            for layer in group:
                # straight into the instance dict: nn.Module.__setattr__ costs ~3 us a layer,
                # and a sync of a small model is mostly this kind of host work
                vars(layer)["sync_count"] = layer.sync_count + 1
    return sum(len(g) for g in groups.values())


def _stream_rows(layers, streams) -> torch.Tensor | None:
    if all(row is None for row in streams):
        return None
    return torch.tensor([row or (0, 0, 0) for row in streams], dtype=torch.int64)


class SyncPlan:
    """sync_layers for a fixed list of FA layers with everything that does not change between
    syncs worked out once: the groups, the detached W, B and B0 of each, the scales that do not
    depend on W. A sync of a small model is mostly host work, and this is most of it. The plan
    holds while every layer keeps its rule and the very tensors it was made from (`valid`:
    a parameter or buffer replaced, `.to()`, or `.data` swapped makes a new one)."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.synced = [layer for layer in self.layers if layer.feedback in SYNC_RULES]
        self.fingerprint = self._fingerprint()
        groups = defaultdict(list)
        for layer in self.synced:
            groups[(layer.weight.device, layer.weight.dtype)].append(layer)
        self.calls = []
        for group in groups.values():
            args = [sync_arguments(layer) for layer in group]
            weights, b_matrices, magnitudes, scales, _ = (list(col) for col in zip(*args))
            tensors = weights + b_matrices + [m for m in magnitudes if m is not None]
            if not all(t.is_contiguous() for t in tensors):
                self.calls = None  # a channels_last conv layer: sync_layers copies
                return
            scaled = [i for i, layer in enumerate(group) if layer.feedback == "scaled_sign"]
            fixed = None if scaled else _scales_tensor(scales, weights[0].device)
            self.calls.append((group, weights, b_matrices, magnitudes, scaled, fixed))

    def _fingerprint(self) -> list:
        """What the plan depends on, per layer: its rule, and each tensor and its storage."""
        out = []
        for layer in self.layers:
            # the module's dicts directly: nn.Module.__getattr__ costs ~0.5 us, a miss ~2 us
            params, buffers = layer._parameters, layer._buffers
            w = params.get("weight")
            b = buffers.get("b_matrix")
            if b is None:
                b = params.get("b_matrix")
            out.append((layer.feedback, w, w.data_ptr() if w is not None else 0, b,
                        b.data_ptr() if b is not None else 0, buffers.get("b_init")))
        return out

    def __reduce__(self):
        # a copy or pickle of the model carries no plan (it would alias the original's tensors)
        return type(None), ()

    def valid(self, layers) -> bool:
        return layers == self.layers and self._fingerprint() == self.fingerprint

    def run(self) -> int:
        if self.calls is None:
            return sync_layers(self.layers)
        op = torch.ops.soap_cuda.feedback_sync_
        for group, weights, b_matrices, magnitudes, scaled, fixed in self.calls:
            scales = fixed
            if scales is None:  # scaled_sign: from W now (0-d device tensors, no host read)
                scales = _scales_tensor([sync_arguments(layer)[3] for layer in group],
                                        weights[0].device)
            rows = [(1, stream_seed(layer.feedback_seed), layer.sync_count)
                    if layer.feedback == "random_sign" else None for layer in group]
            op(weights, b_matrices, magnitudes, scales, None, _stream_rows(group, rows))
            for layer in group:
                # straight into the instance dict: nn.Module.__setattr__ costs ~3 us a layer
                vars(layer)["sync_count"] = layer.sync_count + 1
        return len(self.synced)


def plan_for(owner, layers) -> SyncPlan:
    """The SyncPlan of `layers` kept on `owner` (a model, or a layer syncing itself), remade
    when it no longer holds."""
    plan = owner.__dict__.get("_soap_cuda_sync_plan")
    if plan is None or not plan.valid(layers):
        plan = SyncPlan(layers)
        owner.__dict__["_soap_cuda_sync_plan"] = plan
    return plan


_MIXIN = None


def _collect(module: nn.Module, out: list) -> None:
    if isinstance(module, _MIXIN):
        out.append(module)
    for child in module._modules.values():
        if child is not None:
            _collect(child, out)


def feedback_layers(model: nn.Module):
    """Every feedback-alignment layer of the model (FALinear, FAConv1d/2d/3d), in order, each
    once (as model.modules(), walked directly: a per-sync cost of small models)."""
    global _MIXIN
    if _MIXIN is None:
        from .feedback_layer import FeedbackLayerMixin
        _MIXIN = FeedbackLayerMixin
    out: list = []
    _collect(model, out)
    if len(set(map(id, out))) != len(out):  # a layer used twice: its first place
        seen: set = set()
        out = [m for m in out if not (id(m) in seen or seen.add(id(m)))]
    return out


def sync_feedback(model: nn.Module) -> int:
    """Sync every sign-type FALinear in `model` now (for users who drive the schedule
    themselves, e.g. around a compiled training step). Returns how many layers were synced."""
    return plan_for(model, feedback_layers(model)).run()


@contextlib.contextmanager
def schedule_paused(model: nn.Module):
    """Forward passes inside do not advance the layers' example counters (nor sync)."""
    layers = feedback_layers(model)
    saved = [layer.schedule_paused for layer in layers]
    for layer in layers:
        layer.schedule_paused = True
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.schedule_paused = value


@contextlib.contextmanager
def backprop_mode(model: nn.Module):
    """Inside, every FALinear routes its error through W (exact backprop), counters paused."""
    layers = feedback_layers(model)
    saved = [layer.feedback_override for layer in layers]
    for layer in layers:
        layer.feedback_override = "bp"
    try:
        with schedule_paused(model):
            yield
    finally:
        for layer, value in zip(layers, saved):
            layer.feedback_override = value
