"""`soap-cuda report RESULTS`: a Markdown report with PNG figures from a sweep's results.

The analysis is recomputed from the run files (so a different target loss can be asked for);
every sentence about "faster"/"slower" comes from `stats.verdict`, i.e. from whether a bootstrap
interval excludes 1, never from a point estimate alone.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import plots
from .analysis import analyze
from .runs import RunStore
from .sweep import edge_phrase, load_sweep


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return f"{x:.{digits}g}"


def _interval(d: dict, digits=3, scale=1.0) -> str:
    if d["bound"] == "unknown":
        return "n/a (censored)"
    if math.isinf(d["estimate"]):
        return "not reached"
    prefix = {"lower": "≥ ", "upper": "≤ "}.get(d["bound"], "")
    return (f"{prefix}{_f(d['estimate'] * scale, digits)} "
            f"[{_f(d['lo'] * scale, digits)}, {_f(d['hi'] * scale, digits)}]")


def _member(c: dict, arm: str) -> dict | None:
    return next((m for m in c["members"] if m["arm"] == arm), None)


def _execution(sweep: dict) -> str:
    """How the sweep ran: batched (how many runs in stacked groups) or sequential."""
    ex = sweep.get("execution") or {}
    if not ex:
        return ""
    where = f"{ex['processes']} processes" + (
        f" on each of {ex['ranks']} torchrun ranks" if ex.get("ranks", 1) > 1 else "")
    if ex["mode"] == "sequential":
        return f", sequential: each run on its own, {where}"
    return (f", batched: {ex['runs_in_stacked_groups']} runs in {ex['stacked_groups']} stacked "
            f"groups, {ex['single_runs']} on their own, {where}")


def _sentence(c: dict, arm: str) -> str:
    m, ref = _member(c, arm), c["ref"]
    if m is None:
        return f"{arm}: not in this sweep."
    r = m["ratio_vs_ref"]
    what = {"faster": f"**needs fewer examples than {ref}** (the interval lies below 1)",
            "slower": f"**needs more examples than {ref}** (the interval lies above 1)",
            "not resolved": f"is **not distinguishable from {ref}** (the interval contains 1 "
                            f"or is censored)"}[m["verdict"]]
    censored = ""
    if m["reached"] < c["seeds"]:
        censored = (f" Only {m['reached']}/{c['seeds']} seeds reached the target, so the ratio "
                    f"is a bound.")
    return (f"`{arm}` (lr {m['lr']:g}) needs {_interval(r, 3)} times the examples of `{ref}` "
            f"(lr {_member(c, ref)['lr']:g}) to reach loss {c['target_loss']:.3g}: it {what}."
            f"{censored}")


_TEST_ERROR_NOTE = {
    "best validation": "Test error: of each run's best-validation evaluation (the model a "
                       "published table would report), in %.",
    "final": "Test error: at the end of each run, in % (no validation split: `--val-fraction "
             "0.1` holds one out and gives the best-validation model's test error instead)."}


def _test_error(m: dict) -> str:
    d = m.get("test_error")
    return "n/a" if d is None else _interval(d, 3, scale=100.0)


def _contrast_table(c: dict) -> list[str]:
    kind = c.get("test_error_kind", "final")
    lines = [f"Target training loss {c['target_loss']:.4g} ({c['target_note']}); "
             f"run length {int(c['budget_examples']):,} examples; {c['seeds']} seeds; "
             f"95% bootstrap intervals over seeds (paired by seed for ratios). "
             f"{_TEST_ERROR_NOTE[kind]}", "",
             f"| arm | lr | examples to target | ratio vs {c['ref']} | verdict | "
             f"final train loss | test error % ({kind}) | seeds reaching target |",
             "|---|---|---|---|---|---|---|---|"]
    for m in c["members"]:
        lines.append(
            f"| {m['arm']} | {m['lr']:g} | {_interval(m['mean_examples'], 4)} | "
            f"{_interval(m['ratio_vs_ref'])} | {m['verdict']} | "
            f"{_interval(m['final_train_loss'])} | {_test_error(m)} | "
            f"{m['reached']}/{c['seeds']}" + (f" ({m['diverged']} diverged)" if m["diverged"]
                                              else "") + " |")
    return lines


def _model_text(cfg: dict, data: dict) -> str:
    model = cfg.get("model", "mlp")
    if model == "lenet":
        return "LeNet-5 (conv 6-16-120, tanh, average pooling, fc 84-" + \
            f"{data['num_classes']}; FAConv2d and FALinear layers)"
    if model == "resnet20":
        return "ResNet-20 (He et al.'s CIFAR layout; FAConv2d and FALinear layers)"
    return (f"MLP {data['in_features']}-{'-'.join(map(str, cfg['hidden']))}-"
            f"{data['num_classes']}, {cfg['activation']}")


def write_report(results_dir: str | Path, target_loss: float | None = None,
                 target_fraction: float | None = None) -> Path:
    out = Path(results_dir)
    sweep = load_sweep(out)
    spec = dict(sweep["spec"])
    if target_loss is not None:
        spec["target_loss"] = target_loss
    if target_fraction is not None:
        spec["target_fraction"] = target_fraction
    seeds, arms = sweep["seeds"], sweep["arms"]
    store = RunStore(out)
    an = analyze(spec, arms, seeds, store)
    best, contrasts = an["best_lr"], {c["name"]: c for c in an["contrasts"]}
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)

    figs = {}
    for name, c in contrasts.items():
        figs[name] = plots.learning_curves(store, c, seeds, figdir / f"curves_{name}.png")
    figs["lr"] = plots.lr_sensitivity(store, arms, best, seeds, figdir / "lr_sensitivity.png")
    sgd = [a["label"] for a in arms if a["optimizer"] == "sgd" and not a["gain_of"]]
    align_members = [(a, best[a]["lr"]) for a in sgd if a != "bp"]
    figs["align"] = plots.alignment(store, align_members, seeds, figdir / "alignment.png")
    gain_cs = [contrasts[n] for n in ("sgd_fixed_lr", "sgd_best_lr", "adam_best_lr")
               if n in contrasts]
    figs["gain"] = plots.gains(gain_cs, figdir / "gains.png")
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731

    first = store.records("bp", best["bp"]["lr"], seeds[0])[0]
    data = first["data"]
    cfg = first["config"]
    first_sync = ("and before the first batch" if cfg.get("sync_at_start") else
                  f"the first sync after {cfg['sync_every']} examples: until then they are FA")
    L = ["# Feedback alignment sweep report", ""]
    L += ["## Setup", "",
          f"- Data: {data['description']} ({data['in_features']} inputs).",
          f"- Model: {_model_text(cfg, data)}, FA layers for every rule "
          f"(backprop = `bp`, B kept equal to W, through the same code).",
          f"- Training: batch {cfg['batch_size']}, {cfg['epochs']:g} epochs "
          f"({int(round(cfg['epochs'] * data['train_examples'])):,} examples), sign rules "
          f"sync B every {cfg['sync_every']} examples "
          f"({first_sync}), "
          f"momentum {cfg['momentum']:g}, "
          f"weight decay {cfg['weight_decay']:g}"
          + (f", learning rate x0.1 at {', '.join(f'{f:.0%}' for f in cfg['lr_drops'])} of "
             "the run" if cfg.get("lr_drops") else "") + ".",
          f"- Seeds: {len(seeds)} per (rule, learning rate); each seed fixes initial weights, "
          f"feedback matrices and data order, and is shared across rules (paired comparisons).",
          f"- SGD grid {sorted(spec['lrs'])}, fixed lr {spec['fixed_lr']:g}; Adam grid "
          f"{sorted(spec['adam_lrs'])}; grids extended by log steps while the best lr sat at "
          f"an edge (at most {spec['max_extend']} times).",
          f"- Sweep wall time: {_f(sweep.get('wall_s'), 3)} s{_execution(sweep)}."
          if sweep.get("wall_s") else "",
          "", "## Best learning rate per arm", "",
          "Best = lowest mean final training loss over seeds (a learning rate where any seed "
          "diverged does not qualify).", "",
          "| arm | optimizer | grid | best lr | mean final train loss | notes |",
          "|---|---|---|---|---|---|"]
    for a in arms:
        b = best[a["label"]]
        notes = "; ".join(a["notes"]) or "inside the grid"
        if b["at_edge"] and "still at" not in notes:
            notes += (f" — **best still at {edge_phrase(b['at_edge'])}: the optimum may lie "
                      f"outside**")
        L.append(f"| {a['label']} | {a['optimizer']} | {', '.join(f'{x:g}' for x in a['lrs'])} "
                 f"| {b['lr']:g} | {_f(b['score'], 4)} | {notes} |")
    L += ["", f"![learning-rate sensitivity]({rel(figs['lr'])})", ""]

    # ---- question 1
    L += ["## 1. Examples to reach a target loss: FA vs backprop", ""]
    for name in ("sgd_fixed_lr", "sgd_best_lr"):
        c = contrasts[name]
        L += [f"### {c['title']}", "", "- " + _sentence(c, "fa"), ""]
        L += _contrast_table(c) + ["", f"![{name}]({rel(figs[name])})", ""]

    # ---- question 2
    L += ["## 2. Does `sign` beat backprop, and does it survive the controls?", ""]
    checks = [("sgd_fixed_lr", "At one fixed learning rate (the seed's setting)"),
              ("sgd_best_lr", "Each rule at its own best learning rate"),
              ("gain_matched_sign_fixed_lr", "Against gain-matched backprop, fixed lr"),
              ("gain_matched_sign_best_lr", "Against gain-matched backprop, each at its best lr"),
              ("adam_best_lr", "Under Adam, each rule at its best learning rate")]
    for name, heading in checks:
        if name not in contrasts:
            L += [f"- {heading}: not run in this sweep.", ""]
            continue
        c = contrasts[name]
        arms_here = [m["arm"] for m in c["members"] if m["arm"] != c["ref"]]
        sentences = [_sentence(c, a) for a in arms_here
                     if a.split("+")[0] in ("sign", "rescaled_sign", "bp")]
        L += [f"### {heading}", ""] + [f"- {s}" for s in sentences] + [""]
        if name.startswith("gain_matched"):
            gm = c["ref"]
            g = sweep["gains"].get(gm, {})
            lrg = repr(float(_member(c, gm)["lr"]))
            if lrg in g:
                L += ["Per-layer learning-rate multipliers given to gain-matched backprop "
                      "(sign's measured error-signal norm ratio at that lr): " +
                      ", ".join(f"{k} x{v:.3g}" for k, v in sorted(g[lrg].items())) + ".", ""]
        L += _contrast_table(c) + ["", f"![{name}]({rel(figs[name])})", ""]
    L += ["Reading: an advantage of `sign` over `bp` that disappears at each rule's best "
          "learning rate, against gain-matched backprop, or under Adam is explained by the "
          "larger effective per-layer learning rate, not by a better error direction. "
          "`rescaled_sign` keeps B's original magnitudes and so isolates the direction.", ""]

    # ---- the same control for every other gain-matched rule (--gain-match dfa, ...)
    others = [name for name in contrasts if name.startswith("gain_matched_")
              and not name.startswith("gain_matched_sign_")]
    if others:
        L += ["## 2b. Other rules against backprop with their per-layer gains", "",
              "Each rule's measured error-signal norm ratios, given to backprop as per-layer "
              "learning-rate multipliers: whatever difference is left is the error "
              "direction's.", ""]
    for name in others:
        c = contrasts[name]
        rule = [m["arm"] for m in c["members"] if m["arm"] not in (c["ref"], "bp")][0]
        L += [f"### {c['title']}", "", "- " + _sentence(c, rule), ""]
        L += _contrast_table(c) + ["", f"![{name}]({rel(figs[name])})", ""]

    # ---- question 3
    L += ["## 3. Error-signal alignment and gain", ""]
    L += ["Angle between the error signal each layer receives (dL/d output) and the one "
          "backprop would deliver, measured on a fixed probe batch at every evaluation; the "
          "last layer always receives the exact error. Dashed: angle between B and W.", "",
          f"![alignment]({rel(figs['align'])})", "",
          "| arm | lr | layer | error angle (mean over training) | first | last | "
          "error norm ratio (geo. mean) |", "|---|---|---|---|---|---|---|"]
    for label, lr in align_members:
        evs = store.evals(label, lr, seeds[0])
        for layer in sorted((evs[-1].get("layers") or {})):
            per_seed = [[r["layers"][layer].get("err_angle_deg") for r in store.evals(label, lr, s)
                         if layer in (r.get("layers") or {})] for s in seeds]
            first_a = sum(v[0] for v in per_seed) / len(per_seed)
            last_a = sum(v[-1] for v in per_seed) / len(per_seed)
            c = contrasts["sgd_best_lr"]
            m = _member(c, label)["layers"].get(layer, {})
            L.append(f"| {label} | {lr:g} | {layer} | {_f(m.get('err_angle_deg'))}° | "
                     f"{_f(first_a)}° | {_f(last_a)}° | {_f(m.get('err_norm_ratio'))} |")
    L += ["", "Error-signal norm ratio ||delta_rule|| / ||delta_bp|| per layer: the rule's "
          "effective learning-rate gain for that layer (1 = backprop's step size).", "",
          f"![gains]({rel(figs['gain'])})", ""]
    L = [ln for ln in L if ln is not None]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path
