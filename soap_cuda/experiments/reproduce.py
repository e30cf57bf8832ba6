"""`soap-cuda reproduce PRESET`: a published benchmark table, rerun with this library.

A preset fixes the recipe of the table it reproduces (model, data, optimizer, schedule,
evaluation protocol) and the published numbers to set beside ours. A run of it:
  1. pilot: each rule at each learning rate of the grid, one seed, `pilot_epochs` epochs
     without the step schedule; each rule keeps the learning rate of lowest validation error
     (never the test set: the choice must not see what is reported); a rule whose best sits at
     an edge of its grid gets one more geometric step there, up to `max_extend` times, as a
     sweep's grids do;
  2. the table: each rule at its learning rate with `seeds` seeds and the full recipe;
  3. OUT/reproduce.md and OUT/reproduce.json: per rule, the best-validation model's test error
     (mean and 95% bootstrap interval over seeds), the published number beside it, the
     schedule and the wall time.
Runs train stacked, as a sweep's do (sweep.Runner), and runs already on disk are reused, so an
interrupted reproduction resumes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import load_dataset
from .models import SYNCED_RULES
from .runs import RunStore, is_complete, run_path
from .stats import best_lr, extend_grid, mean_ci
from .sweep import forget_units

# BioTorch's LeNet table (Benchmarks.md of the BioTorch repository): top-1 test error %, the
# model of best validation accuracy. Its names: uSF = scaled_sign, frSF = rescaled_sign,
# brSF = random_sign; it has no Kolen-Pollack or plain sign row.
BIOTORCH_LENET = {
    "mnist": {"bp": 0.91, "fa": 1.7, "scaled_sign": 0.94, "random_sign": 0.91,
              "rescaled_sign": 0.97, "dfa": 1.61},
    "fashion-mnist": {"bp": 9.2, "fa": 13.06, "scaled_sign": 9.69, "random_sign": 10.02,
                      "rescaled_sign": 9.61, "dfa": 12.81},
}
BIOTORCH_NAMES = {"scaled_sign": "uSF", "rescaled_sign": "frSF", "random_sign": "brSF"}
LENET_RULES = ["bp", "fa", "dfa", "kolen_pollack", "scaled_sign", "rescaled_sign",
               "random_sign", "sign"]


@dataclass
class Preset:
    name: str
    title: str
    model: str
    dataset: str
    published: dict[str, float]
    source: str
    rules: list[str] = field(default_factory=lambda: list(LENET_RULES))
    epochs: float = 100.0
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_drops: list[float] = field(default_factory=lambda: [0.5, 0.75])
    val_fraction: float = 0.1
    # BioTorch's sign-concordant layers recompute B from W at every forward: a sync every batch
    sync_every: int = 64
    lrs: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1])


def _lenet(dataset: str) -> Preset:
    return Preset(
        name=f"lenet-{dataset}", title=f"LeNet-5 on {dataset}, BioTorch's recipe",
        model="lenet", dataset=dataset, published=BIOTORCH_LENET[dataset],
        source="BioTorch's benchmark table (LeNet, top-1 test error %)")


PRESETS = {p.name: p for p in (_lenet("fashion-mnist"), _lenet("mnist"))}


@dataclass
class Options:
    """What a user may change of a preset (the rest is its recipe)."""
    epochs: float | None = None
    seeds: int = 3
    lrs: list[float] | None = None
    pilot_epochs: float = 1.0
    max_extend: int = 2
    sync_every: int | None = None  # the sign rules' sync interval (default: the preset's)
    rules: list[str] | None = None
    data_dir: str | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    device: str = "cpu"


def _config(preset: Preset, opts: Options, rule: str, lr: float, seed: int, epochs: float,
            eval_every: int, pilot: bool) -> TrainConfig:
    # rules without a sync keep TrainConfig's default interval, which they ignore: their runs
    # stay the same runs (and are reused) whatever interval the sign rules are given
    sync_every = (opts.sync_every or preset.sync_every) if rule in SYNCED_RULES else \
        TrainConfig.sync_every
    return TrainConfig(
        rule=rule, lr=lr, seed=seed, model=preset.model, dataset=preset.dataset,
        data_dir=opts.data_dir, epochs=epochs, batch_size=preset.batch_size,
        momentum=preset.momentum, weight_decay=preset.weight_decay,
        lr_drops=[] if pilot else preset.lr_drops, sync_every=sync_every,
        val_fraction=preset.val_fraction, train_examples=opts.train_examples,
        test_examples=opts.test_examples, eval_every=eval_every, device=opts.device)


def _best_val_error(store: RunStore, label: str, lr: float, seed: int) -> float:
    """Test error of the best-validation evaluation; inf for a run that diverged."""
    best = store.final(label, lr, seed).get("best_val")
    return math.inf if best is None else best["test_error"]


def _val_error(store: RunStore, label: str, lr: float, seed: int) -> float:
    best = store.final(label, lr, seed).get("best_val")
    return math.inf if best is None else 1.0 - best["val_acc"]


def reproduce(preset_name: str, out_dir: str | Path, opts: Options, runner) -> dict:
    """Run the preset (pilot, then the table) with `runner` (a sweep.Runner); returns the
    summary also written to OUT/reproduce.json."""
    preset = PRESETS[preset_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rules = opts.rules or preset.rules
    lrs = sorted(opts.lrs or preset.lrs)
    epochs = opts.epochs or preset.epochs
    data = load_dataset(preset.dataset, opts.data_dir, train_examples=opts.train_examples,
                        test_examples=opts.test_examples, pad_to=32,
                        val_fraction=preset.val_fraction)
    per_epoch = len(data.y_train)  # evaluations once per epoch, as the published protocol

    def run_all(cells, root: Path, run_epochs: float, pilot: bool, desc: str) -> RunStore:
        tasks = []
        for rule, lr, seed in cells:
            cfg = _config(preset, opts, rule, lr, seed, run_epochs,
                          min(per_epoch, max(1, int(run_epochs * per_epoch) // 2)) if pilot
                          else per_epoch, pilot).to_dict()
            path = run_path(root, rule, lr, seed)
            if not is_complete(path, cfg):
                tasks.append((cfg, str(path)))
        runner.run(tasks, desc)
        return RunStore(root)

    chosen, pilot_table, notes = {}, {}, {}
    if len(lrs) > 1:
        grids = {r: list(lrs) for r in rules}
        for extension in range(opts.max_extend + 1):
            store = run_all([(r, lr, 0) for r in rules for lr in grids[r]], out / "pilot",
                            opts.pilot_epochs, True, "pilot")
            grew = False
            for r in rules:
                errors = {lr: _val_error(store, r, lr, 0) for lr in grids[r]}
                pilot_table[r] = errors
                best = best_lr(errors)  # ties: the smaller lr
                chosen[r] = best.lr
                if best.at_edge in ("low", "high"):
                    if extension < opts.max_extend:
                        grids[r] = sorted({*grids[r], extend_grid(grids[r], best.at_edge)})
                        grew = True
                    else:
                        notes[r] = f"best pilot lr still at the {best.at_edge} edge"
            if not grew:
                break
    else:
        chosen = {r: lrs[0] for r in rules}
    seeds = list(range(opts.seeds))
    store = run_all([(r, chosen[r], s) for r in rules for s in seeds], out, epochs, False,
                    "table")
    forget_units(out)
    rows = []
    for r in rules:
        finals = [store.final(r, chosen[r], s) for s in seeds]
        errs = [_best_val_error(store, r, chosen[r], s) for s in seeds]
        ci = mean_ci([100.0 * e for e in errs])
        best_epochs = [f["best_val"]["examples"] / per_epoch for f in finals if "best_val" in f]
        rows.append({"rule": r, "lr": chosen[r], "test_error_pct": ci.to_dict(),
                     "per_seed_pct": [100.0 * e for e in errs],
                     "diverged": sum(bool(f["diverged"]) for f in finals),
                     "best_epoch_mean": (sum(best_epochs) / len(best_epochs)
                                         if best_epochs else None),
                     "published_pct": preset.published.get(r), "note": notes.get(r)})
    first = store.records(rules[0], chosen[rules[0]], 0)[0]
    summary = {"preset": asdict(preset), "options": asdict(opts), "epochs": epochs,
               "lrs": lrs, "pilot": {r: {repr(k): v for k, v in sorted(e.items())}
                                     for r, e in pilot_table.items()},
               "data": first["data"], "rows": rows, "wall_s": time.perf_counter() - t0,
               "runs_trained": sum(runner.units)}
    (out / "reproduce.json").write_text(json.dumps(summary, indent=1))
    (out / "reproduce.md").write_text(render(summary))
    return summary


def _pct(ci: dict) -> str:
    if math.isinf(ci["estimate"]):
        return "diverged"
    return f"{ci['estimate']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}]"


def _sync_text(summary: dict) -> str:
    p = summary["preset"]
    every = summary["options"]["sync_every"] or p["sync_every"]
    if every == p["batch_size"]:
        return "batch (as BioTorch's layers recompute B from W at every forward)"
    return f"{every} examples"


def render(summary: dict) -> str:
    p, data = summary["preset"], summary["data"]
    name = lambda r: f"{r} ({BIOTORCH_NAMES[r]})" if r in BIOTORCH_NAMES else r  # noqa: E731
    lines = [f"# {p['title']}", "",
             f"- Data: {data['description']}.",
             f"- Recipe: LeNet-5 (32x32 input), SGD momentum {p['momentum']:g}, weight decay "
             f"{p['weight_decay']:g}, batch {p['batch_size']}, {summary['epochs']:g} epochs, "
             f"learning rate x0.1 at {', '.join(f'{f:.0%}' for f in p['lr_drops'])} of them; "
             f"sign rules sync B every {_sync_text(summary)}; an evaluation every epoch.",
             f"- Selection: the learning rate per rule from the grid "
             f"{', '.join(f'{x:g}' for x in summary['lrs'])} (extended by a step where a "
             f"rule's best sat at an edge) by the lowest validation error of a "
             f"{summary['options']['pilot_epochs']:g}-epoch pilot (seed 0, no schedule)"
             if summary["pilot"] else "- Learning rate: one for every rule, as given.",
             f"- Reported: the test error of each run's best-validation evaluation; mean over "
             f"{summary['options']['seeds']} seeds with a 95% bootstrap interval.",
             f"- Wall time: {summary['wall_s']:.0f} s ({summary['runs_trained']} runs trained).",
             "", f"| rule | lr | test error % at best validation | per seed | best epoch "
             f"(mean) | {p['source']}, {p['dataset']} |", "|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        pub = row["published_pct"]
        best = row["best_epoch_mean"]
        lines.append(
            f"| {name(row['rule'])} | {row['lr']:g} | {_pct(row['test_error_pct'])} | "
            f"{', '.join(f'{v:.2f}' for v in row['per_seed_pct'])} | "
            f"{'n/a' if best is None else f'{best:.1f}'} | "
            f"{'not in the table' if pub is None else f'{pub:g}'} |"
            + (f" {row['note']}" if row.get("note") else ""))
    if summary["pilot"]:
        grid = sorted({float(x) for errs in summary["pilot"].values() for x in errs})
        lines += ["", "Pilot validation error % (seed 0; blank: not run for that rule):", "",
                  "| rule | " + " | ".join(f"lr {x:g}" for x in grid) + " |",
                  "|---|" + "---|" * len(grid)]
        for r, errs in summary["pilot"].items():
            cells = []
            for x in grid:
                v = errs.get(repr(x))
                cells.append("" if v is None else "diverged" if math.isinf(v) else
                             f"{100 * v:.2f}")
            lines.append(f"| {name(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
