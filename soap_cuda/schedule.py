"""The feedback sync schedule, one source for every layer that follows it: an FA layer
(FeedbackLayerMixin) and each model's slice of a stacked layer (soap_cuda.stacked).

A schedule holds `sync_every` (examples between syncs, or None), `sync_at_start`,
`examples_seen` and `sync_count`. A forward pass counts its batch when the layer is training,
grad is enabled, the schedule is not paused and there is a schedule at all (`counts`); the
count then crosses a multiple of `sync_every`, or is the first with `sync_at_start`, and a sync
is due before that batch's output is computed (`advance`), so its backward already uses the
new B.
"""
from __future__ import annotations

import torch

# Set (to 1) by code whose process group is not a data-parallel one (a sweep spread over ranks:
# soap_cuda/experiments/ranks.py), so that the schedule counts this process's examples only.
WORLD_SIZE_OVERRIDE: int | None = None


def world_size() -> int:
    if WORLD_SIZE_OVERRIDE is not None:
        return WORLD_SIZE_OVERRIDE
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def has_schedule(layer) -> bool:
    return layer.sync_every is not None or layer.sync_at_start


def counts(module, scheduled: bool) -> bool:
    """Whether a forward pass of `module` (training flag, `schedule_paused`) counts its batch
    now; `scheduled`: whether anything in it follows a schedule."""
    return scheduled and module.training and not module.schedule_paused \
        and torch.is_grad_enabled()


def advance(schedule, batch: int, world: int | None = None) -> bool:
    """Count `batch` examples (times the world size: under torch.distributed T counts global
    examples) on `schedule`; True when a sync is due now."""
    before = schedule.examples_seen
    # straight into the instance dict (a plain int): nn.Module.__setattr__ costs ~1 us a call,
    # on every counted forward
    vars(schedule)["examples_seen"] = before + batch * (world_size() if world is None else world)
    first = schedule.sync_at_start and before == 0 and schedule.sync_count == 0
    crossed = schedule.sync_every is not None and \
        schedule.examples_seen // schedule.sync_every > before // schedule.sync_every
    return first or crossed


# -- recording and driving ---------------------------------------------------------------------
# A graphed step (soap_cuda.graphed) runs the model's first step eagerly with a recorder here,
# to learn how many examples each layer counts per step; after that a DeviceSchedule counts
# and syncs for the layers (they are `driven` and skip their own count).
_recording: dict | None = None


class recording:
    """Inside, every counted forward also adds its batch to `self.counts[layer]`."""

    def __init__(self):
        self.counts: dict = {}

    def __enter__(self):
        global _recording
        self._outer, _recording = _recording, self.counts
        return self

    def __exit__(self, *exc):
        global _recording
        _recording = self._outer


def record(layer, batch: int) -> None:
    if _recording is not None:
        _recording[layer] = _recording.get(layer, 0) + batch
