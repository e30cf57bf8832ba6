"""A sweep spread over processes started by torchrun (several GPUs or machines): every rank
plans the same work units, trains every world-th of them, and all ranks then exchange the run
files they wrote, so each holds every result (the next stage of a sweep reads them: grid
extensions, gain-matched arms). Rank 0 writes sweep.json and the report.

The process group (gloo: it only carries run files, and works on any machine) exists for this
exchange alone; the runs inside keep counting their own examples (see `local_examples`)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> None:
    """Join the group torchrun describes; a CUDA sweep puts each rank on its local GPU."""
    if dist.is_initialized() or not launched_by_torchrun():
        return
    dist.init_process_group("gloo")
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def share_run_files(paths: list[str], root: str | Path) -> None:
    """Every rank ends up with every rank's run files, under its own `root` (the sweep's output
    folder, which need not be the same path, or the same disk, on every rank)."""
    if world() == 1:
        return
    root = Path(root)
    mine = {str(Path(p).relative_to(root)): Path(p).read_text() for p in paths
            if Path(p).is_file()}
    everyone: list[dict] = [{} for _ in range(world())]
    dist.all_gather_object(everyone, mine)
    for files in everyone:
        for relative, text in files.items():
            target = root / relative
            if not target.is_file() or target.read_text() != text:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def local_examples():
    """Runs trained inside a sweep's ranks count their own examples: the sweep's process group
    is not a data-parallel one, so FA layers must not multiply by its size."""
    from soap_cuda import schedule

    saved = schedule.WORLD_SIZE_OVERRIDE
    schedule.WORLD_SIZE_OVERRIDE = 1
    try:
        yield
    finally:
        schedule.WORLD_SIZE_OVERRIDE = saved
