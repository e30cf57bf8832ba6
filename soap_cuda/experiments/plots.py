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
           "scaled_sign": "tab:orange", "random_sign": "tab:purple", "soap": "tab:brown"}


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
    ax.set_ylabel("training loss (full train set)")
    ax.set_title(contrast["title"], fontsize=10)
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
            for lr in np.array(lrs)[~ok]:
                ax.annotate("diverged", (lr, 0.98), xycoords=("data", "axes fraction"),
                            color=c, fontsize=7, ha="center", va="top", rotation=90)
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
    layers = sorted({layer for label, lr in members for r in store.evals(label, lr, seeds[0])
                     for layer in (r.get("layers") or {})})
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for label, lr in members:
            for key, ls in (("err_angle_deg", "-"), ("bw_angle_deg", "--")):
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
                     f"layer)\nand of {layer}'s own B to its W (dashed; shapes the layer below)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def gains(contrasts: list[dict], path: Path) -> Path:
    """Error-signal norm ratio ||delta_rule|| / ||delta_bp|| per layer: the rule's effective
    per-layer learning-rate multiplier (1 = backprop's step size)."""
    fig, axes = plt.subplots(1, len(contrasts), figsize=(5 * len(contrasts), 4.2), squeeze=False,
                             sharey=True)
    for ax, c in zip(axes[0], contrasts):
        members = [m for m in c["members"] if m["layers"]]
        layers = sorted({layer for m in members for layer in m["layers"]})
        width = 0.8 / max(1, len(members))
        for i, m in enumerate(members):
            vals = [m["layers"].get(layer, {}).get("err_norm_ratio") or np.nan for layer in layers]
            ax.bar(np.arange(len(layers)) + i * width, vals, width, color=color(m["arm"]),
                   label=f"{m['arm']} (lr {m['lr']:g})")
        ax.axhline(1.0, color="k", lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
        if ax is axes[0][0]:
            ax.set_ylabel("||error_rule|| / ||error_bp||\n(geometric mean over training)")
        ax.set_title(c["title"], fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y", which="both")
    return _save(fig, path)
