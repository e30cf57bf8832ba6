"""What a sweep's runs say: best learning rates, and contrasts with intervals.

A contrast compares arms, each at one learning rate, against a reference arm (backprop in the
same setting): examples needed to reach a target training loss (per seed, then the ratio of
means with a paired bootstrap interval over seeds), final training loss, test accuracy, the test
error of the best-validation evaluation (runs with a validation split; the final test error
otherwise), and each arm's per-layer error-signal gain and angle against backprop.
"""
from __future__ import annotations

import math

import numpy as np

from .controls import gain_matched_label
from .runs import RunStore
from .stats import best_lr, mean_ci, ratio_ci, time_to_target, value_at, verdict


def _layer_means(store: RunStore, label: str, lr: float, seeds: list[int]) -> dict:
    """Per layer: geometric-mean error-signal norm ratio and mean angles over training."""
    acc: dict[str, dict[str, list[float]]] = {}
    for s in seeds:
        for r in store.evals(label, lr, s):
            if r["examples"] == 0:
                continue
            for layer, m in (r.get("layers") or {}).items():
                for k, v in m.items():
                    if v is not None and math.isfinite(v):
                        acc.setdefault(layer, {}).setdefault(k, []).append(v)
    out = {}
    for layer, d in sorted(acc.items()):
        out[layer] = {}
        for k, v in d.items():
            v = np.asarray(v)
            if k.endswith("norm_ratio"):
                out[layer][k] = float(np.exp(np.log(v[v > 0]).mean())) if (v > 0).any() else None
            else:
                out[layer][k] = float(v.mean())
    return out


def test_errors(finals: list[dict]) -> tuple[list[float], str]:
    """Per run, the test error of its best-validation evaluation ("best validation"), or, when
    no run of the sweep has a validation split, its final test error ("final"); inf for a run
    with none (diverged before any healthy evaluation)."""
    if any("best_val" in f for f in finals):
        return [f["best_val"]["test_error"] if "best_val" in f else math.inf
                for f in finals], "best validation"
    return [1.0 - f["test_acc"] if f.get("test_acc") is not None else math.inf
            for f in finals], "final"


def _mean_curve(store: RunStore, label: str, lr: float, seeds: list[int]):
    curves = [store.curve(label, lr, s) for s in seeds]
    x = np.asarray(curves[0][0], dtype=float)
    ys = []
    for cx, cy in curves:
        y = np.interp(x, cx, np.asarray(cy, dtype=float))
        ys.append(y)
    return x, np.mean(ys, axis=0)


def contrast(store: RunStore, name: str, title: str, members: list[tuple[str, float]],
             ref: str, seeds: list[int], target_loss: float | None,
             target_fraction: float) -> dict:
    lrs = dict(members)
    x_ref, y_ref = _mean_curve(store, ref, lrs[ref], seeds)
    budget = float(x_ref[-1])
    if target_loss is None:
        # The loss backprop (mean over seeds) reaches after this fraction of the budget: bp
        # needs about fraction*budget examples, so rules up to 1/fraction times slower still
        # reach it within the run.
        target = value_at(x_ref, y_ref, target_fraction * budget)
        target_note = (f"mean training loss of {ref} at lr {lrs[ref]:g} after "
                       f"{target_fraction:.0%} of the run ({int(target_fraction * budget):,} "
                       f"examples)")
    else:
        target, target_note = float(target_loss), "set by the user"
    times = {label: [time_to_target(*store.curve(label, lr, s), target) for s in seeds]
             for label, lr in members}
    rows = []
    kinds = set()
    for label, lr in members:
        finals = [store.final(label, lr, s) for s in seeds]
        errors, kind = test_errors(finals)
        kinds.add(kind)
        ratio = ratio_ci(times[label], times[ref], censor_at=budget)
        rows.append({
            "arm": label, "lr": lr,
            "examples_to_target": [None if math.isinf(t) else t for t in times[label]],
            "reached": sum(math.isfinite(t) for t in times[label]),
            "mean_examples": mean_ci(times[label]).to_dict(),
            "ratio_vs_ref": ratio.to_dict(),
            "verdict": "reference" if label == ref else verdict(ratio),
            "final_train_loss": mean_ci([f["train_loss"] for f in finals]).to_dict(),
            "final_test_acc": mean_ci([f["test_acc"] if f["test_acc"] is not None else 0.0
                                       for f in finals]).to_dict(),
            "test_error": mean_ci(errors).to_dict(),
            "diverged": sum(bool(f.get("diverged")) for f in finals),
            "layers": _layer_means(store, label, lr, seeds),
        })
    return {"name": name, "title": title, "ref": ref, "target_loss": target,
            "target_note": target_note, "budget_examples": budget, "seeds": len(seeds),
            "test_error_kind": "best validation" if "best validation" in kinds else "final",
            "members": rows}


def analyze(spec: dict, arms: list[dict], seeds: list[int], store: RunStore) -> dict:
    by_label = {a["label"]: a for a in arms}
    best = {}
    for a in arms:
        b = best_lr({lr: store.score(a["label"], lr, seeds) for lr in a["lrs"]})
        best[a["label"]] = b.to_dict()
    fixed = spec["fixed_lr"]
    tl, tf = spec["target_loss"], spec["target_fraction"]
    sgd = [a["label"] for a in arms if a["optimizer"] == "sgd" and not a["gain_of"]]
    out = []

    def add(name, title, members, ref):
        out.append(contrast(store, name, title, members, ref, seeds, tl, tf))

    add("sgd_fixed_lr", f"SGD, every rule at one fixed learning rate ({fixed:g})",
        [(a, fixed) for a in sgd], "bp")
    add("sgd_best_lr", "SGD, every rule at its own best learning rate",
        [(a, best[a]["lr"]) for a in sgd], "bp")
    for rule in spec["gain_match"]:
        gm = gain_matched_label(rule)
        if gm not in by_label:
            continue
        add(f"gain_matched_{rule}_fixed_lr",
            f"{rule} vs backprop with {rule}'s per-layer gains, at lr {fixed:g}",
            [(gm, fixed), (rule, fixed), ("bp", fixed)], gm)
        add(f"gain_matched_{rule}_best_lr",
            f"{rule} vs gain-matched backprop, each at its best learning rate",
            [(gm, best[gm]["lr"]), (rule, best[rule]["lr"]), ("bp", best["bp"]["lr"])], gm)
    adam = [a["label"] for a in arms if a["optimizer"] == "adam"]
    if "bp+adam" in adam:
        add("adam_best_lr", "Adam, every rule at its own best learning rate",
            [(a, best[a]["lr"]) for a in adam], "bp+adam")
    return {"best_lr": best, "contrasts": out}
