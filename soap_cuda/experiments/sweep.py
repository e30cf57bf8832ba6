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

import contextlib
import hashlib
import json
import math
import os
import queue as queues
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
BASE_FIELDS = ("model", "lr_drops", "hidden", "epochs", "batch_size", "sync_every",
               "sync_at_start", "activation", "dataset", "data_dir", "download",
               "train_examples", "test_examples", "val_fraction", "eval_every",
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
_WORKER_PROGRESS = None  # in a worker process: where its units report their steps


class _Progress:
    """A unit's training progress, sent to the main process at most every INTERVAL_S seconds
    (examples done, summed over a stack's models, and optimizer steps)."""

    INTERVAL_S = 0.25

    def __init__(self, queue):
        self.queue, self.unit = queue, None
        self.examples = self.steps = 0
        self.sent = time.perf_counter()

    def __call__(self, examples: int) -> None:
        self.examples += examples
        self.steps += 1
        if time.perf_counter() - self.sent >= self.INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.examples or self.steps:
            self.queue.put((self.unit, self.examples, self.steps))
            self.examples = self.steps = 0
        self.sent = time.perf_counter()


def _worker_init(threads: int, queue) -> None:
    global _WORKER_PROGRESS
    # Ctrl-C reaches the whole process group: the main process alone decides, and ends workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _WORKER_PROGRESS = _Progress(queue)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process for the block (a no-op off the main thread). While the
    pool spawns workers (submit does): an ignored SIGINT is the one disposition a new process
    inherits, so a Ctrl-C that lands while a worker still imports torch, before _worker_init
    runs, leaves it alone (the main process ends it) instead of printing a traceback. While
    workers are being ended: a second Ctrl-C changes nothing."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _load(cfg: TrainConfig, device: str):
    from .data import load_dataset

    return load_dataset(cfg.dataset, cfg.data_dir, cfg.download, device, cfg.train_examples,
                        cfg.test_examples, cfg.pad_to, cfg.val_fraction)


def _data_for(cfg: TrainConfig):
    """`cfg`'s data set on its device, prepared once per process (the runs share it)."""
    key = (cfg.dataset, cfg.data_dir, cfg.train_examples, cfg.test_examples, cfg.device,
           cfg.pad_to, cfg.val_fraction)
    if key not in _WORKER_DATA:  # each process prepares a data set once per sweep
        _WORKER_DATA[key] = _load(cfg, cfg.device)
    return _WORKER_DATA[key]


def group_checkpoint(out: Path, tasks: list[tuple[dict, str]]) -> Path:
    """Where a unit keeps its checkpoint, beside its runs' files: named by their paths and
    settings, so a sweep with other settings never resumes it."""
    key = json.dumps(sorted((p, cfg) for cfg, p in tasks), sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(out) / "runs" / ".stacked" / f"{digest}.pt"


def forget_units(out: Path) -> None:
    """Every unit run from OUT has finished: the plans and checkpoints left under
    OUT/runs/.stacked/ belong to none, and no later run may resume them."""
    for stale in (Path(out) / "runs" / ".stacked").glob("*"):
        stale.unlink(missing_ok=True)


def _run_task(tasks: list[tuple[dict, str]], unit: int | None = None, checkpoint=None,
              on_step=None, graphs: bool | None = None) -> tuple[int, int]:
    """One run alone (a list of one task), or several batchable runs as one stacked model,
    checkpointed at `checkpoint` (resumed from it when it exists, deleted at the end); graphs:
    a stack's steps through soap_cuda.graphed_step (train_batched(graphed=...); None: on
    CUDA).
    Returns (runs done, optimizer steps taken). `on_step(examples)` after every step (in a
    worker: its queue to the main process)."""
    from .batched import train_batched
    from .train import train

    if on_step is None and _WORKER_PROGRESS is not None:
        on_step, _WORKER_PROGRESS.unit = _WORKER_PROGRESS, unit
    cfgs = [TrainConfig.from_dict(t[0]) for t in tasks]
    try:
        if len(tasks) == 1:
            with ranks.local_examples():
                records = train(cfgs[0], out_path=tasks[0][1], data=_data_for(cfgs[0]),
                                checkpoint_path=checkpoint, resume=True, on_step=on_step)
            result = 1, records[-2].get("step", 0)  # the last evaluation, before "final"
        else:
            results = train_batched(cfgs, [t[1] for t in tasks], _data_for(cfgs[0]),
                                    on_step=on_step, checkpoint_path=checkpoint,
                                    graphed=graphs)
            result = len(tasks), max(r[-2].get("step", 0) for r in results)
    finally:
        if isinstance(on_step, _Progress):
            on_step.flush()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)  # the runs' files now hold everything
    return result


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
    that can share a stacked model train as one (soap_cuda/experiments/batched.py). Every unit
    checkpoints (a single run as `train()` does, a stack as `train_batched` does) under
    OUT/runs/.stacked/, so an interrupted sweep resumes it where it stood. The progress bar
    counts training examples (summed over runs) of those planned, from every process."""

    def __init__(self, jobs: int, progress: bool, batched: bool = True, out: Path = Path("."),
                 graphs: bool = False):
        self.jobs = max(1, jobs)
        self.graphs = graphs
        self.progress = progress
        self.batched = batched
        self.out = out
        self.pool = None
        self.queue = None
        self.units: list[int] = []  # size of every unit run, for the report
        self.steps = 0

    def __enter__(self):
        if self.jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            ctx = get_context("spawn")
            self.queue = ctx.Queue()
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_worker_init,
                                            initargs=(threads, self.queue))
        return self

    def __exit__(self, exc_type, *exc):
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.shutdown()
        else:
            self.stop_workers()

    def stop_workers(self) -> None:
        """End every worker now (an interrupt or an error): terminate, then kill what is left
        after a moment; never wait for their work. A second Ctrl-C meanwhile is ignored."""
        with _sigint_ignored():
            # the executor has no public way to end its workers: its own process table
            procs = list((getattr(self.pool, "_processes", None) or {}).values())
            for p in procs:
                p.terminate()
            deadline = time.monotonic() + 3.0
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
            self.pool.shutdown(wait=False, cancel_futures=True)
            # The executor's manager thread closes its wake-up pipe as it sees the workers gone;
            # if that lands while the interpreter's exit hook writes to the pipe, Python 3.11
            # prints an EBADF traceback at exit. Waiting for the thread here closes that window.
            manager = getattr(self.pool, "_executor_manager_thread", None)
            if manager is not None:
                manager.join(3.0)
            self.queue.cancel_join_thread()
            self.queue.close()

    def _planned_examples(self, tasks: list[tuple[dict, str]]) -> list[int]:
        """Each task's training examples: its epochs times its training set's size."""
        sizes = {}
        out = []
        for cfg_dict, _ in tasks:
            cfg = TrainConfig.from_dict(cfg_dict)
            key = (cfg.dataset, cfg.data_dir, cfg.train_examples, cfg.val_fraction)
            if key not in sizes:  # the runs' own copy when they train here on the CPU
                data = _data_for(cfg) if cfg.device == "cpu" else _load(cfg, "cpu")
                sizes[key] = len(data.y_train)
            out.append(int(round(cfg.epochs * sizes[key])))
        return out

    def run(self, tasks: list[tuple[dict, str]], desc: str) -> None:
        if not tasks:
            return
        units = self._resumable_units(tasks)
        resumed = {p for u in units for _, p in u}
        units += plan_units([t for t in tasks if t[1] not in resumed], self.batched, self.jobs)
        self._save_plan(units)
        self.units += [len(u) for u in units]
        # every rank planned the same units
        mine = list(enumerate(units))[ranks.rank()::ranks.world()]
        bar, plans = None, [0] * len(units)
        if self.progress and ranks.rank() == 0:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                everyone = [t for u in units for t in u]
                planned = dict(zip((p for _, p in everyone), self._planned_examples(everyone)))
                plans = [sum(planned[p] for _, p in u) for u in units]
                bar = tqdm(total=sum(plans), unit="ex", unit_scale=True, file=sys.stderr,
                           desc=f"{desc} ({len(tasks)} runs)", dynamic_ncols=True,
                           smoothing=0.05)
        start = time.perf_counter()
        done_examples = [0] * len(units)
        runs_done = [0]

        def advance(uid: int, examples: int, steps: int) -> None:
            self.steps += steps
            if bar is None:
                return
            examples = min(examples, plans[uid] - done_examples[uid])  # late reports: none
            done_examples[uid] += examples
            bar.set_postfix_str(f"{min(runs_done[0], len(tasks))}/{len(tasks)} runs, "
                                f"{self.steps / (time.perf_counter() - start):.0f} steps/s",
                                refresh=False)
            bar.update(examples)

        def finished(uid: int, result) -> None:
            runs_done[0] += result[0]
            if bar is not None:  # diverged runs stop early: their unit counts in full
                advance(uid, plans[uid] - done_examples[uid], 0)

        if self.pool is None:
            for uid, unit in mine:
                finished(uid, _run_task(unit, uid, self._checkpoint(unit),
                                        on_step=lambda ex, uid=uid: advance(uid, ex, 1),
                                        graphs=self.graphs))
        else:
            with _sigint_ignored():
                futures = {self.pool.submit(_run_task, unit, uid, self._checkpoint(unit),
                                            None, self.graphs): uid
                           for uid, unit in mine}
            while futures:
                done, _ = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
                self._drain(advance)
                for fut in done:
                    finished(futures.pop(fut), fut.result())  # re-raises a worker's error
        if bar is not None:
            bar.close()
        ranks.share_run_files([path for _, unit in mine for _, path in unit], self.out)

    def _drain(self, advance) -> None:
        while True:
            try:
                uid, examples, steps = self.queue.get_nowait()
            except queues.Empty:
                return
            advance(uid, examples, steps)

    def _checkpoint(self, unit: list[tuple[dict, str]]) -> Path:
        return group_checkpoint(self.out, unit)

    def _resumable_units(self, tasks: list[tuple[dict, str]]) -> list[list[tuple[dict, str]]]:
        """The units an interrupted sweep planned for these tasks, as it planned them (so each
        stack resumes from its checkpoint, or starts, with the models it had; a stack whose
        diverged models finished early still resumes whole): every stored unit all of whose
        runs are still to do here or were finished by it."""
        if ranks.world() > 1:  # ranks plan alike only from what all of them see: the tasks
            return []
        folder = Path(self.out) / "runs" / ".stacked"
        todo = {p: cfg for cfg, p in tasks}
        units, taken = [], set()
        for path in sorted(folder.glob("plan-*.json")):
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for unit in stored:
                members = [(cfg, p) for cfg, p in unit]
                if not any(p in todo for _, p in members) or any(p in taken for _, p in members):
                    continue
                if all(todo.get(p) == cfg or is_complete(Path(p), cfg) for cfg, p in members):
                    units.append(members)
                    taken.update(p for _, p in members)
        return units

    def _save_plan(self, units: list[list[tuple[dict, str]]]) -> None:
        """The units as planned, for a resume after an interrupt (removed when the sweep ends)."""
        if ranks.world() > 1 or not any(len(u) > 1 for u in units):
            return
        text = json.dumps(units)
        path = Path(self.out) / "runs" / ".stacked" / \
            f"plan-{hashlib.sha1(text.encode()).hexdigest()[:16]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


class Sweep:
    def __init__(self, spec: SweepSpec, out_dir: str | Path, jobs: int = 1,
                 progress: bool = False, log=print, batched: bool = True,
                 graphs: bool | None = None):
        spec.validate()
        self.spec = spec
        self.batched = batched
        self.graphs = graphs
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
        with Runner(self.jobs, self.progress, self.batched, self.out, self.graphs) as runner:
            sgd = [Arm(r, r, "sgd", list(sgd_lrs)) for r in spec.rules]
            adam = [Arm(f"{r}+adam", r, "adam", sorted(spec.adam_lrs)) for r in spec.adam_rules]
            # SGD and Adam arms in one phase: their runs stack together (a rule's SGD and Adam
            # models share one stack); gain-matched backprop needs the SGD arms' gains first
            self.arms += sgd + adam
            self._run_arms(sgd + adam, runner, "SGD and Adam arms" if adam else "SGD arms")
            gm = []
            for r in spec.gain_match:
                src = next(a for a in sgd if a.label == r)
                gm.append(Arm(gain_matched_label(r), "bp", "sgd", list(src.lrs), gain_of=r))
            self._run_arms(gm, runner, "gain-matched backprop")
            self.arms = sgd + gm + adam  # the report's order
        if ranks.rank() == 0:
            forget_units(self.out)
        from .batched import graphs_by_default
        stacked = [u for u in runner.units if u > 1]
        total = sum(len(a.lrs) for a in self.arms) * len(self.seeds)
        self.execution = {"mode": "batched" if self.batched else "sequential",
                          "graphs": self.batched and (
                              self.graphs if self.graphs is not None
                              else graphs_by_default(spec.base.get("device", "cpu"))),
                          "processes": self.jobs, "ranks": ranks.world(),
                          "runs_trained": sum(runner.units),
                          "runs_reused": max(0, total - sum(runner.units)),
                          "stacked_groups": len(stacked), "runs_in_stacked_groups": sum(stacked),
                          "single_runs": sum(1 for u in runner.units if u == 1)}
        wall_s = time.perf_counter() - t0
        previous = self._previous_run()
        if not runner.units and previous is not None:
            # a rerun that trained nothing: the figures of the sweep that trained these runs
            wall_s, self.execution = previous
            self.execution = {**self.execution, "rerun_reused_all": True}
        result = self.summary(wall_s)
        if ranks.rank() == 0:
            with open(self.out / "sweep.json", "w") as f:
                json.dump(result, f, indent=1)
        return result

    def _previous_run(self) -> tuple[float, dict] | None:
        """(wall time, execution) of the sweep.json already here, if it has them: the run of
        the sweep that trained these runs (a rerun that reused all keeps its figures)."""
        try:
            old = load_sweep(self.out)
        except (OSError, ValueError):
            return None
        if old.get("wall_s") is None or not old.get("execution"):
            return None
        return old["wall_s"], old["execution"]

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
