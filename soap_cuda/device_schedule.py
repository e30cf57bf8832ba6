"""The sync schedule on the device: example counters, the "sync due" decision and the sync itself
as tensor code with no host read, so a whole training step can be one CUDA graph or one
compiled graph (soap_cuda.graphed).

A DeviceSchedule takes over the scheduled FA layers of a model, or the scheduled model slices
of a stacked network (their own forwards stop counting: `_schedule_driver` of the FA layer or
the stacked layer). Each `advance(increments)` adds each layer's
examples of one step to its counter and makes one masked `feedback_sync_` call per
(device, dtype) for all sync-rule layers: the due ones are synced, the others untouched. The
rule is the layers' own (soap_cuda.schedule): due when the count crosses a multiple of
`sync_every`, or at the first counted step with `sync_at_start`; random_sign draws |M| in the
kernel from the Philox stream (feedback_seed, sync_count). So a driven step gives the bits an
eager step gives. The counters live here while the layers are driven; `write_back()` (called by
the layers' state_dict) copies them to the layers, `reload()` (their load_state_dict) back.

`schedule_on_device(model)` drives a model's FA layers the other way, from their own forwards
(`in_forward`): each counted forward adds its batch to its layer's device counter and syncs that
layer if due, the eager rule in tensor code; so `torch.compile(model, fullgraph=True)`, which
cannot hold the layers' Python schedule, compiles with the schedule inside.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from . import feedback as fb


class _Group:
    """The scheduled layers of one (device, dtype): sync-rule layers first."""

    def __init__(self, layers: list, device: torch.device):
        self.layers = sorted(layers, key=lambda layer: layer.feedback not in fb.SYNC_RULES)
        self.synced = [layer for layer in self.layers if layer.feedback in fb.SYNC_RULES]
        for layer in self.synced:
            if not layer.b_matrix.is_contiguous():
                raise ValueError(f"a device schedule syncs B in place: {type(layer).__name__}'s "
                                 f"b_matrix must be contiguous (a channels_last conv layer's is "
                                 f"not; convert the model back to contiguous_format)")
        n = len(self.synced)
        opts = {"device": device, "dtype": torch.int64}
        self.examples = torch.zeros(len(self.layers), **opts)
        # 0 where a layer has no period (sync_every=None); clamped for the division
        every = [layer.sync_every or 0 for layer in self.synced]
        self.every = torch.tensor(every, **opts)
        self.period = self.every.clamp_min(1)
        self.at_start = torch.tensor([layer.sync_at_start for layer in self.synced],
                                     dtype=torch.bool, device=device)
        # (draw, seed, sync count) per sync layer: the op's streams; column 2 is the count
        self.streams = torch.zeros(n, 3, **opts)
        self.sync_count = self.streams[:, 2]
        self.scaled = [i for i, layer in enumerate(self.synced) if layer.feedback == "scaled_sign"]
        self.scales = torch.tensor([fb.xavier_std(layer) if layer.feedback == "random_sign"
                                    else 1.0 for layer in self.synced],
                                   dtype=torch.float64, device=device)
        self.reload()

    def reload(self) -> None:
        """The device counters from the layers' own (in place: a captured graph keeps them)."""
        device = self.examples.device
        with torch.no_grad():
            self.examples.copy_(torch.tensor([layer.examples_seen for layer in self.layers],
                                             dtype=torch.int64).to(device))
            rows = [(int(layer.feedback == "random_sign"), fb.stream_seed(layer.feedback_seed),
                     layer.sync_count) for layer in self.synced]
            if rows:
                self.streams.copy_(torch.tensor(rows, dtype=torch.int64).to(device))

    def write_back(self) -> None:
        for layer, seen in zip(self.layers, self.examples.tolist()):
            vars(layer)["examples_seen"] = seen
        for layer, count in zip(self.synced, self.sync_count.tolist()):
            vars(layer)["sync_count"] = count

    def advance(self, increments: torch.Tensor) -> None:
        """One step: count `increments` (one per layer), then one masked sync."""
        self.examples.add_(increments)
        if self.synced:
            n = len(self.synced)
            self._sync_due(slice(0, n), increments[:n])

    def count(self, index: int, batch: int) -> None:
        """One counted forward of layers[index] (schedule_on_device): its counter += batch,
        then, for a sync-rule layer, its own masked sync."""
        self.examples[index:index + 1].add_(batch)
        if index < len(self.synced):
            self._sync_due(slice(index, index + 1), batch)

    def _sync_due(self, rows: slice, added) -> None:
        """The masked sync of synced[rows], whose counters just grew by `added`: due where
        the count crossed a multiple of T, or at the first counted step with sync_at_start."""
        after = self.examples[rows]
        before = after - added
        crossed = (self.every[rows] > 0) & (after // self.period[rows] >
                                            before // self.period[rows])
        first = self.at_start[rows] & (before == 0) & (self.sync_count[rows] == 0)
        due = crossed | first
        layers = self.synced[rows]
        weights = [layer.weight.detach() for layer in layers]
        magnitudes = [layer.b_init if layer.feedback == "rescaled_sign" else None
                      for layer in layers]
        torch.ops.soap_cuda.feedback_sync_(weights, [layer.b_matrix.detach()
                                                     for layer in layers],
                                           magnitudes, self._scales(rows, weights), due,
                                           self.streams[rows])
        self.sync_count[rows].add_(due)

    def _scales(self, rows: slice, weights) -> torch.Tensor:
        """synced[rows]' scales: scaled_sign's follows W (computed every step, used where
        due)."""
        scaled = [i for i in self.scaled if rows.start <= i < rows.stop]
        if not scaled:
            return self.scales[rows]
        scales = list(self.scales[rows].unbind())
        for i in scaled:
            scales[i - rows.start] = fb.scaled_sign_scale(weights[i - rows.start],
                                                          self.synced[i].b_init_norm)
        return torch.stack(scales)


class DeviceSchedule:
    """The device schedule of `counts`' layers: {layer: examples it counts per step}."""

    def __init__(self, counts: dict, world: int = 1, in_forward: bool = False):
        groups = defaultdict(list)
        for layer in counts:
            groups[(layer.weight.device, layer.weight.dtype)].append(layer)
        self.groups = [_Group(layers, device) for (device, _), layers in groups.items()]
        self.counts = counts
        self.world = world
        self._increments = {}
        # in_forward: the layers' forwards call count() (schedule_on_device); else a step
        # calls advance() once for all (graphed_step)
        self.in_forward = in_forward
        self._slots = {layer: (g, i) for g in self.groups for i, layer in enumerate(g.layers)}

    def increments(self, counts: dict | None = None) -> list[torch.Tensor]:
        """Per group, the device tensor of examples each layer counts in one step (cached)."""
        counts = self.counts if counts is None else counts
        key = tuple(sorted((id(layer), n) for layer, n in counts.items()))
        if key not in self._increments:
            self._increments[key] = [
                torch.tensor([counts.get(layer, 0) * self.world for layer in g.layers],
                             dtype=torch.int64, device=g.examples.device) for g in self.groups]
        return self._increments[key]

    def count(self, layer, batch: int) -> None:
        """A counted forward of `layer` with `batch` examples (times the world size)."""
        group, index = self._slots[layer]
        with torch.no_grad():
            group.count(index, batch * self.world)

    def advance(self, increments: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for group, inc in zip(self.groups, increments):
                group.advance(inc)

    def attach(self) -> None:
        owners = self.owners()
        if any(owner._schedule_driver not in (None, self) for owner in owners):
            raise ValueError("a layer of this model is driven by another graphed step already; "
                             "close() that one first")
        for owner in owners:
            owner._schedule_driver = self

    def detach(self) -> None:
        """The layers count for themselves again, from the current counts."""
        self.write_back()
        for owner in self.owners():
            if owner._schedule_driver is self:
                owner._schedule_driver = None

    def layers(self) -> list:
        return [layer for g in self.groups for layer in g.layers]

    def owners(self) -> list:
        """The modules that count: each FA layer, and for a model's slice of a stacked layer
        (soap_cuda.stacked.ModelSlice) the stacked layer."""
        out = {}
        for layer in self.layers():
            owner = getattr(layer, "_stacked", layer)
            out[id(owner)] = owner
        return list(out.values())

    def write_back(self) -> None:
        for g in self.groups:
            g.write_back()

    def reload(self) -> None:
        for g in self.groups:
            g.reload()


def schedule_on_device(model) -> DeviceSchedule:
    """Move the sync schedule of `model`'s FA layers (those with sync_every or sync_at_start)
    onto the device, advanced by their own forwards: the same syncs at the same examples, bit
    for bit, with no host decision, so `torch.compile(model, fullgraph=True)` compiles the
    schedule with the model. The model's state_dict stays current; `.detach()` on the returned
    schedule hands counting back to the layers. A stacked network, or a step to capture whole,
    goes through soap_cuda.graphed_step instead."""
    from . import schedule
    from .feedback_layer import FeedbackLayerMixin
    if any(hasattr(type(m), "_schedule_driver") and not isinstance(m, FeedbackLayerMixin)
           for m in model.modules()):
        raise ValueError("schedule_on_device drives FA layers; a stacked network's schedules "
                         "move to the device through soap_cuda.graphed_step")
    layers = [m for m in model.modules()
              if isinstance(m, FeedbackLayerMixin) and schedule.has_schedule(m)]
    if not layers:
        raise ValueError("no layer of this model has a sync schedule (sync_every or "
                         "sync_at_start)")
    driver = DeviceSchedule({layer: 0 for layer in layers}, schedule.world_size(),
                            in_forward=True)
    driver.attach()
    return driver
