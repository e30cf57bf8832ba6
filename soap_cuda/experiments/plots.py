"""PNG figures of a sweep (matplotlib, no display needed)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .runs import RunStore  # noqa: E402

_COLORS = {"bp": "black", "fa": "tab:blue", "sign": "tab:red", "rescaled_sign": "tab:green",
           "scaled_sign": "tab:orange", "random_sign": "tab:purple", "soap": "tab:brown",
           "dfa": "tab:pink", "kolen_pollack": "tab:olive"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def color(label: str) -> str:
    if label.startswith("bp_gain_matched"):
        return "tab:gray"
    return _COLORS.get(label.split("+")[0], "tab:cyan")


def _seed_curves(store: RunStore, label, lr, seeds, key="train_loss"):
    xs, ys = None, []
    for s in seeds:
        x, y = store.curve(label, lr, s, key)
        y = np.asarray([v if v is not None else np.nan for v in y], dtype=float)
        if xs is None:
            xs = np.asarray(x, dtype=float)
        ys.append(np.interp(xs, x, y))
    return xs, np.asarray(ys)


def layer_order(store: RunStore, label: str, lr: float, seed) -> list[str]:
    """The run's layers from input to output, as its records list them (the model's order;
    sorting names as text would put net.11 before net.3)."""
    names: dict[str, None] = {}
    for r in store.evals(label, lr, seed):
        names.update(dict.fromkeys(r.get("layers") or {}))
    return list(names)


def measured_on(store: RunStore, label: str, lr: float, seed) -> str:
    """What the curves' training loss was computed on: the run's fixed evaluation subset, or
    the whole training set."""
    recs = store.records(label, lr, seed)
    total = recs[0].get("data", {}).get("train_examples")
    n = next((r["eval_examples"][0] for r in recs if r.get("eval_examples")), None)
    if n is None or n == total:
        return "whole training set" + (f", {total:,} examples" if total else "")
    return f"fixed subset of {n:,} training examples"


def learning_curves(store: RunStore, contrast: dict, seeds, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in contrast["members"]:
        x, ys = _seed_curves(store, m["arm"], m["lr"], seeds)
        ys = np.where(np.isfinite(ys), ys, np.nan)
        mean = np.nanmean(ys, axis=0)
        c = color(m["arm"])
        ax.plot(x, mean, color=c, lw=2, label=f"{m['arm']} (lr {m['lr']:g})")
        ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=c, alpha=0.15)
    ax.axhline(contrast["target_loss"], color="k", ls="--", lw=1,
               label=f"target loss {contrast['target_loss']:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("training examples seen")
    first = contrast["members"][0]
    ax.set_ylabel(f"training loss\n({measured_on(store, first['arm'], first['lr'], seeds[0])})")
    ax.set_title(f"{contrast['title']}\nline: mean over {len(seeds)} seeds; band: lowest to "
                 f"highest seed", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def lr_sensitivity(store: RunStore, arms: list[dict], best: dict, seeds, path: Path) -> Path:
    groups = [("SGD", [a for a in arms if a["optimizer"] == "sgd"]),
              ("Adam", [a for a in arms if a["optimizer"] == "adam"])]
    groups = [g for g in groups if g[1]]
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, (title, group) in zip(axes[0], groups):
        top = 0.0
        for a in group:
            lrs = sorted(a["lrs"])
            finals = np.array([[store.final(a["label"], lr, s)["train_loss"] for s in seeds]
                               for lr in lrs], dtype=float)
            ok = np.isfinite(finals).all(axis=1)
            mean = np.where(ok, finals.mean(axis=1) if ok.any() else np.nan, np.nan)
            c = color(a["label"])
            ax.errorbar(np.array(lrs)[ok], mean[ok],
                        yerr=[mean[ok] - finals[ok].min(1), finals[ok].max(1) - mean[ok]],
                        color=c, marker="o", ms=4, capsize=2, label=a["label"])
            if ok.any():
                top = max(top, float(np.nanmax(finals[ok])))
            for lr in np.array(lrs)[~ok]:  # each arm its own row: labels never stack up
                ax.annotate(f"{a['label']} diverged", (lr, 0.98 - 0.05 * group.index(a)),
                            xycoords=("data", "axes fraction"), color=c, fontsize=7,
                            ha="center", va="top")
                ax.plot([lr], [0.98 - 0.05 * group.index(a)], marker="x", color=c,
                        transform=ax.get_xaxis_transform(), clip_on=False)
            b = best[a["label"]]
            if math.isfinite(b["score"]):
                ax.plot([b["lr"]], [b["score"]], marker="*", ms=14, color=c, mec="k")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss (mean, bars: min-max over seeds)")
        ax.set_title(f"{title}: learning-rate sensitivity (star = best)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def alignment(store: RunStore, members: list[tuple[str, float]], seeds, path: Path) -> Path:
    """Error-signal angle to backprop (solid) and B-W angle (dashed) over training, per layer."""
    layers = list(dict.fromkeys(layer for label, lr in members
                                for layer in layer_order(store, label, lr, seeds[0])))
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        # the first layer's B would carry the error to the input, which nothing uses: no line
        keys = (("err_angle_deg", "-"),) if layer == layers[0] else \
            (("err_angle_deg", "-"), ("bw_angle_deg", "--"))
        for label, lr in members:
            for key, ls in keys:
                xs, ys = [], []
                for s in seeds:
                    ev = [r for r in store.evals(label, lr, s) if layer in (r.get("layers") or {})
                          and r["layers"][layer].get(key) is not None]
                    xs = [r["examples"] for r in ev]
                    ys.append([r["layers"][layer][key] for r in ev])
                if not xs:
                    continue
                n = min(len(y) for y in ys)
                mean = np.mean([y[:n] for y in ys], axis=0)
                ax.plot(xs[:n], mean, ls=ls, color=color(label),
                        label=f"{label} (lr {lr:g})" if ls == "-" else None)
        ax.set_ylim(0, 95)
        ax.set_xlabel("training examples seen")
        ax.set_ylabel("angle to backprop (degrees)")
        ax.set_title(f"{layer}: angle of the error reaching {layer} (solid; exact at the last "
                     f"layer)" + ("" if layer == layers[0] else
                                  f"\nand of {layer}'s own B to its W (dashed; shapes the "
                                  f"layer below)"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def gain_axis(ax, values) -> None:
    """A log axis for gains with labelled ticks on both sides of 1, wherever the bars end."""
    finite = [v for v in values if v is not None and np.isfinite(v) and v > 0]
    lo, hi = min(finite + [1.0]), max(finite + [1.0])
    ax.set_ylim(min(lo / 1.5, 0.5), max(hi * 1.5, 2.0))
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def gains(contrasts: list[dict], path: Path, order: list[str] | None = None) -> Path:
    """Error-signal norm ratio ||delta_rule|| / ||delta_bp|| per layer: the rule's effective
    per-layer learning-rate multiplier (1 = backprop's step size); layers in `order` (input to
    output) where given."""
    fig, axes = plt.subplots(1, len(contrasts), figsize=(5 * len(contrasts), 4.2), squeeze=False,
                             sharey=True)
    shown = []
    for ax, c in zip(axes[0], contrasts):
        members = [m for m in c["members"] if m["layers"]]
        seen = {layer for m in members for layer in m["layers"]}
        layers = [n for n in (order or []) if n in seen] + sorted(seen - set(order or []))
        width = 0.8 / max(1, len(members))
        for i, m in enumerate(members):
            vals = [m["layers"].get(layer, {}).get("err_norm_ratio") or np.nan for layer in layers]
            ax.bar(np.arange(len(layers)) + i * width, vals, width, color=color(m["arm"]),
                   label=f"{m['arm']} (lr {m['lr']:g})")
            shown += vals
        ax.axhline(1.0, color="k", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
        if ax is axes[0][0]:
            ax.set_ylabel("||error_rule|| / ||error_bp||\n(geometric mean over training)")
        ax.set_title(c["title"], fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y", which="both")
    for ax in axes[0]:  # shared: one range for every panel
        gain_axis(ax, shown)
    return _save(fig, path)
