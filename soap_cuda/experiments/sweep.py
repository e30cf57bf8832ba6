"""Learning-rate sweeps over rules and seeds, with the controls that keep comparisons fair.

A sweep trains, for every arm (a rule with an optimizer), every learning rate of its grid with
every seed. The grid of an arm whose best learning rate sits at an edge is extended by one
geometric step at a time (up to `max_extend` times) until the best lies inside. Arms:
  * SGD: one per rule in `rules`, on `lrs` (always including `fixed_lr`);
  * gain-matched backprop, one per rule in `gain_match`: backprop whose per-layer learning rates
    are multiplied by that rule's measured error-signal norm ratio at the same base lr;
  * Adam: one per rule in `adam_rules`, on `adam_lrs`.
Runs already on disk with the same settings are reused, so an interrupted sweep resumes.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from . import ranks
from .analysis import analyze
from .config import TrainConfig
from .controls import GAIN_KEYS, gain_matched_label, measured_gains
from .optimizers import ConfigError
from .runs import RunStore, is_complete, run_path
from .stats import best_lr, extend_grid

# TrainConfig fields a sweep shares across all its runs.
BASE_FIELDS = ("model", "lr_drops", "hidden", "epochs", "batch_size", "sync_every", "sync_at_start", "activation",
               "dataset", "data_dir", "download", "train_examples", "test_examples", "val_fraction", "eval_every",
               "eval_examples", "align_every", "probe_examples", "momentum", "weight_decay", "device")


@dataclass
class SweepSpec:
    rules: list[str] = field(default_factory=lambda: ["bp", "fa", "sign", "rescaled_sign"])
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    seeds: int = 5
    fixed_lr: float = 0.01
    gain_match: list[str] = field(default_factory=lambda: ["sign"])
    gain_key: str = "error"
    adam_rules: list[str] = field(default_factory=lambda: ["bp", "sign", "rescaled_sign"])
    adam_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    max_extend: int = 3
    target_loss: float | None = None
    target_fraction: float = 0.25
    base: dict = field(default_factory=dict)  # TrainConfig fields shared by every run

    def validate(self) -> None:
        if "bp" not in self.rules:
            raise ConfigError("a sweep compares against backprop: --rules must include bp")
        if self.seeds < 2:
            raise ConfigError("confidence intervals need at least 2 seeds (--seeds)")
        for r in self.gain_match:
            if r not in self.rules or r == "bp":
                raise ConfigError(f"--gain-match {r}: the rule must be one of --rules (not bp)")
        if self.adam_rules and "bp" not in self.adam_rules:
            raise ConfigError("--adam-rules must include bp (the Adam reference)")
        if self.gain_key not in GAIN_KEYS:
            raise ConfigError(f"--gain-from must be one of {', '.join(GAIN_KEYS)}")
        if not 0 < self.target_fraction <= 1:
            raise ConfigError("--target-fraction must lie in (0, 1]")
        if any(not (lr > 0) for lr in [*self.lrs, *self.adam_lrs, self.fixed_lr]):
            raise ConfigError("learning rates must be positive")
        unknown = set(self.base) - set(BASE_FIELDS)
        if unknown:
            raise ConfigError(f"unknown base settings: {sorted(unknown)}")
        for rule in {*self.rules, *self.adam_rules}:  # checks rule names and base settings
            TrainConfig(rule=rule, **self.base)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Arm:
    label: str
    rule: str
    optimizer: str
    lrs: list[float]
    gain_of: str | None = None  # gain-matched backprop: the rule whose gains it uses
    notes: list[str] = field(default_factory=list)


# ---- running ---------------------------------------------------------------------------------

_WORKER_DATA: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _data_for(cfg: TrainConfig):
    from .data import load_dataset

    key = (cfg.dataset, cfg.data_dir, cfg.train_examples, cfg.test_examples, cfg.device,
           cfg.pad_to, cfg.val_fraction)
    if key not in _WORKER_DATA:  # each process prepares a data set once per sweep
        _WORKER_DATA[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.device,
                                         cfg.train_examples, cfg.test_examples, cfg.pad_to,
                                         cfg.val_fraction)
    return _WORKER_DATA[key]


def _run_task(tasks: list[tuple[dict, str]]) -> tuple[int, int]:
    """One run alone (a list of one task), or several batchable runs as one stacked model.
    Returns (runs done, optimizer steps taken)."""
    from .batched import train_batched
    from .train import train

    cfgs = [TrainConfig.from_dict(t[0]) for t in tasks]
    if len(tasks) == 1:
        with ranks.local_examples():
            records = train(cfgs[0], out_path=tasks[0][1], data=_data_for(cfgs[0]))
        return 1, records[-2].get("step", 0)  # the last evaluation, before "final"
    results = train_batched(cfgs, [t[1] for t in tasks], _data_for(cfgs[0]))
    return len(tasks), max(r[-2].get("step", 0) for r in results)


# At most this many models in one stack, by architecture: a ResNet-20 holds about 3 MB of
# activations per example for its backward, so 32 models at batch 128 hold about 12 GB
MAX_STACKED = {"resnet20": 32}


def edge_phrase(at_edge: str) -> str:
    """Where a best learning rate sits: "the low edge", or both edges of a one-rate grid."""
    return "both edges (a one-rate grid)" if at_edge == "both" else f"the {at_edge} edge"


def plan_units(tasks: list[tuple[dict, str]], batched: bool, jobs: int,
               max_models: int = 128) -> list[list[tuple[dict, str]]]:
    """Work units: with `batched`, the tasks that share a group_key as stacked models (split
    into `jobs` units, at most `max_models` each (fewer for the architectures of MAX_STACKED),
    so every process has a share), every other task alone."""
    from .batched import batchable, group_key

    if not batched:
        return [[t] for t in tasks]
    groups: dict[tuple, list] = {}
    units = []
    for t in tasks:
        cfg = TrainConfig.from_dict(t[0])
        if batchable(cfg):
            groups.setdefault(group_key(cfg), []).append(t)
        else:
            units.append([t])
    for members in groups.values():
        most = min(max_models, MAX_STACKED.get(members[0][0].get("model"), max_models))
        parts = max(min(jobs, len(members)), math.ceil(len(members) / most))
        size = math.ceil(len(members) / parts)
        units += [members[i:i + size] for i in range(0, len(members), size)]
    return units


class Runner:
    """Runs training tasks, in `jobs` processes (1 = in this process); with `batched`, the runs
    that can share a stacked model train as one (soap_cuda/experiments/batched.py)."""

    def __init__(self, jobs: int, progress: bool, batched: bool = True, out: Path = Path(".")):
        self.jobs = max(1, jobs)
        self.progress = progress
        self.batched = batched
        self.out = out
        self.pool = None
        self.units: list[int] = []  # size of every unit run, for the report
        self.steps = 0

    def __enter__(self):
        if self.jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                            initializer=_worker_init, initargs=(threads,))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def run(self, tasks: list[tuple[dict, str]], desc: str) -> None:
        if not tasks:
            return
        units = plan_units(tasks, self.batched, self.jobs)
        self.units += [len(u) for u in units]
        mine = units[ranks.rank()::ranks.world()]  # every rank planned the same units
        bar = None
        if self.progress and ranks.rank() == 0:
            try:
                from tqdm import tqdm
                bar = tqdm(total=len(tasks), unit="run", desc=desc, file=sys.stderr,
                           dynamic_ncols=True)
            except ImportError:
                pass
        start = time.perf_counter()

        def done(result):
            runs, steps = result
            self.steps += steps
            if bar is not None:
                bar.update(runs)
                bar.set_postfix(steps_per_s=f"{self.steps / (time.perf_counter() - start):.0f}")
        if self.pool is None:
            for unit in mine:
                done(_run_task(unit))
        else:
            futures = [self.pool.submit(_run_task, unit) for unit in mine]
            for fut in as_completed(futures):
                done(fut.result())  # re-raises a worker's error here
        if bar is not None:
            bar.close()
        ranks.share_run_files([path for unit in mine for _, path in unit], self.out)


class Sweep:
    def __init__(self, spec: SweepSpec, out_dir: str | Path, jobs: int = 1,
                 progress: bool = False, log=print, batched: bool = True):
        spec.validate()
        self.spec = spec
        self.batched = batched
        self.execution: dict = {}
        self.out = Path(out_dir)
        self.jobs = jobs
        self.progress = progress
        self.log = log
        self.seeds = list(range(spec.seeds))
        self.store = RunStore(self.out)
        self.arms: list[Arm] = []
        self.gains: dict[str, dict] = {}  # gain-matched label -> {lr: {layer: gain}}

    def config(self, arm: Arm, lr: float, seed: int) -> TrainConfig:
        scale = self._scale(arm, lr) if arm.gain_of else None
        base = dict(self.spec.base)
        if arm.optimizer != "sgd":  # --momentum is SGD's; Adam arms use Adam's own betas
            base["momentum"] = 0.0
        return TrainConfig(rule=arm.rule, lr=lr, optimizer=arm.optimizer, seed=seed,
                           layer_lr_scale=scale, label=arm.label, **base)

    def _scale(self, arm: Arm, lr: float) -> dict[str, float]:
        table = self.gains.setdefault(arm.label, {})
        if lr not in table:
            src = next(a for a in self.arms if a.label == arm.gain_of)
            # Measured at the same base lr when the rule ran there, else at the nearest one.
            near = min(src.lrs, key=lambda x: abs(math.log(x / lr)))
            if near != lr:
                arm.notes.append(f"lr {lr:g}: gains taken from {arm.gain_of} at lr {near:g}, "
                                 f"the nearest it ran")
            runs = [self.store.records(src.label, near, s) for s in self.seeds]
            table[lr] = measured_gains(runs, GAIN_KEYS[self.spec.gain_key])
        return table[lr]

    def _run_arms(self, arms: list[Arm], runner: Runner, desc: str) -> None:
        """Run every (lr, seed) of `arms`, extending grids whose best lr sits at an edge."""
        extensions = {a.label: 0 for a in arms}
        while True:
            tasks = []
            for arm in arms:
                for lr in arm.lrs:
                    for seed in self.seeds:
                        cfg = self.config(arm, lr, seed).to_dict()
                        path = run_path(self.out, arm.label, lr, seed)
                        if not is_complete(path, cfg):
                            tasks.append((cfg, str(path)))
            runner.run(tasks, desc)
            grew = False
            for arm in arms:
                best = best_lr({lr: self.store.score(arm.label, lr, self.seeds)
                                for lr in arm.lrs})
                if best.at_edge is not None:
                    if extensions[arm.label] < self.spec.max_extend:
                        edges = ["low", "high"] if best.at_edge == "both" else [best.at_edge]
                        new = [extend_grid(arm.lrs, e) for e in edges]
                        arm.notes.append(f"best lr {best.lr:g} was at the {best.at_edge} "
                                         f"edge of the grid: added lr "
                                         f"{', '.join(f'{x:g}' for x in new)}")
                        if ranks.rank() == 0:
                            self.log(f"[sweep] {arm.label}: {arm.notes[-1]}")
                        arm.lrs = sorted({*arm.lrs, *new})
                        extensions[arm.label] += 1
                        grew = True
                    elif not any("still at" in n for n in arm.notes):
                        arm.notes.append(f"best lr {best.lr:g} still at "
                                         f"{edge_phrase(best.at_edge)} after "
                                         f"{self.spec.max_extend} extensions: the optimum may "
                                         f"lie outside the grid")
            if not grew:
                return

    def run(self) -> dict:
        spec = self.spec
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        sgd_lrs = sorted({*spec.lrs, spec.fixed_lr})
        with Runner(self.jobs, self.progress, self.batched, self.out) as runner:
            sgd = [Arm(r, r, "sgd", list(sgd_lrs)) for r in spec.rules]
            self.arms += sgd
            self._run_arms(sgd, runner, "SGD arms")
            gm = []
            for r in spec.gain_match:
                src = next(a for a in sgd if a.label == r)
                gm.append(Arm(gain_matched_label(r), "bp", "sgd", list(src.lrs), gain_of=r))
            self.arms += gm
            self._run_arms(gm, runner, "gain-matched backprop")
            adam = [Arm(f"{r}+adam", r, "adam", sorted(spec.adam_lrs)) for r in spec.adam_rules]
            self.arms += adam
            self._run_arms(adam, runner, "Adam arms")
        stacked = [u for u in runner.units if u > 1]
        self.execution = {"mode": "batched" if self.batched else "sequential",
                          "processes": self.jobs, "ranks": ranks.world(), "runs_trained": sum(runner.units),
                          "stacked_groups": len(stacked), "runs_in_stacked_groups": sum(stacked),
                          "single_runs": sum(1 for u in runner.units if u == 1)}
        result = self.summary(time.perf_counter() - t0)
        if ranks.rank() == 0:
            with open(self.out / "sweep.json", "w") as f:
                json.dump(result, f, indent=1)
        return result

    def summary(self, wall_s: float | None = None) -> dict:
        arms = [asdict(a) for a in self.arms]
        gains = {label: {repr(lr): g for lr, g in table.items()}
                 for label, table in self.gains.items()}
        return {"spec": self.spec.to_dict(), "seeds": self.seeds, "arms": arms, "gains": gains,
                "wall_s": wall_s, "execution": self.execution, "analysis": analyze(self.spec.to_dict(), arms, self.seeds,
                                                      self.store)}


def load_sweep(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: RESULTS must be a directory written by "
                                f"`soap-cuda sweep`")
    with open(path) as f:
        return json.load(f)
