"""Where a sweep's runs live on disk, and reading them back.

Layout: OUT/runs/<arm label>/lr<lr>_seed<seed>.jsonl, one JSON-lines file per run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import TrainConfig
from .train import read_records


def run_path(out_dir: str | Path, label: str, lr: float, seed: int) -> Path:
    return Path(out_dir) / "runs" / label / f"lr{lr:.4g}_seed{seed}.jsonl"


def is_complete(path: Path, config: dict) -> bool:
    """True when `path` holds a finished run made with exactly `config`."""
    if not path.is_file():
        return False
    try:
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
        first, last = json.loads(lines[0]), json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return False
    # normalised: a run written before a config field existed matches its default
    return first.get("kind") == "config" and \
        TrainConfig.normalised(first.get("config") or {}) == config and \
        last.get("kind") == "final"


class RunStore:
    """Loads run files once and serves curves and final numbers from them."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self._cache: dict[Path, list[dict]] = {}

    def records(self, label: str, lr: float, seed: int) -> list[dict]:
        path = run_path(self.out_dir, label, lr, seed)
        if path not in self._cache:
            self._cache[path] = read_records(path)
        return self._cache[path]

    def evals(self, label: str, lr: float, seed: int) -> list[dict]:
        return [r for r in self.records(label, lr, seed) if r["kind"] == "eval"]

    def curve(self, label: str, lr: float, seed: int, key: str = "train_loss"):
        ev = self.evals(label, lr, seed)
        return [r["examples"] for r in ev], [r.get(key, math.nan) for r in ev]

    def final(self, label: str, lr: float, seed: int) -> dict:
        recs = self.records(label, lr, seed)
        fin = [r for r in recs if r["kind"] == "final"]
        if not fin:
            raise RuntimeError(f"{run_path(self.out_dir, label, lr, seed)} did not finish")
        return fin[-1]

    def score(self, label: str, lr: float, seeds: list[int]) -> float:
        """Mean final training loss over seeds; inf when any seed diverged."""
        losses = [self.final(label, lr, s)["train_loss"] for s in seeds]
        if any(not math.isfinite(v) for v in losses):
            return math.inf
        return sum(losses) / len(losses)
