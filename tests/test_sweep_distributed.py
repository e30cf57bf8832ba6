"""A sweep spread over 2 gloo processes as torchrun would start them: each rank trains its share
of the work units, all ranks end with every run file, rank 0 writes sweep.json and the report,
and the results are identical to one process's."""
import json
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soap_cuda import cli

ARGS = ["sweep", "--dataset", "digits", "--train-examples", "256", "--test-examples", "64",
        "--hidden", "16", "--epochs", "1", "--batch-size", "16", "--eval-every", "64",
        "--probe-examples", "32", "--rules", "bp,fa,sign,dfa", "--lrs", "0.03,0.1", "--seeds",
        "2", "--gain-match", "sign", "--adam-rules", "bp", "--adam-lrs", "0.001,0.003",
        "--max-extend", "0", "--jobs", "1", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, port, out_root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # separate output folders, as on separate machines: the run files must travel
    assert cli.main(ARGS + ["--out", os.path.join(out_root, f"rank{rank}")]) == 0


def _files(root):
    return {p.relative_to(root / "runs"): p.read_text()
            for p in sorted((root / "runs").rglob("*.jsonl"))}


def _strip_wall(text):
    lines = [json.loads(line) for line in text.splitlines()]
    for rec in lines:
        rec.pop("wall_s", None)
    return lines


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_torchrun_sweep_matches_one_process(tmp_path, monkeypatch):
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    torch.set_num_threads(1)
    assert cli.main(ARGS + ["--out", str(tmp_path / "single"), "--no-report"]) == 0

    rank0, rank1, single = tmp_path / "rank0", tmp_path / "rank1", tmp_path / "single"
    assert (rank0 / "sweep.json").is_file() and (rank0 / "report.md").is_file()
    assert not (rank1 / "sweep.json").exists()  # rank 0 alone writes the results
    files0, files1, files_single = _files(rank0), _files(rank1), _files(single)
    assert files0 == files1  # every rank holds every run
    assert set(files0) == set(files_single)
    for name, text in files_single.items():
        assert _strip_wall(files0[name]) == _strip_wall(text), name
    a = json.loads((rank0 / "sweep.json").read_text())
    b = json.loads((single / "sweep.json").read_text())
    assert a["analysis"] == b["analysis"]
    assert a["execution"]["ranks"] == 2 and b["execution"]["ranks"] == 1
    assert "on each of 2 torchrun ranks" in (rank0 / "report.md").read_text()
