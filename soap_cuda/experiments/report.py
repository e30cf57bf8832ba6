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
    where = _n(ex["processes"], "process", "processes") + (
        f" on each of {ex['ranks']} torchrun ranks" if ex.get("ranks", 1) > 1 else "")
    if ex["mode"] == "sequential":
        text = f", sequential: each run on its own, {where}"
    else:
        text = (f", batched: {_n(ex['runs_in_stacked_groups'], 'run')} in "
                f"{_n(ex['stacked_groups'], 'stacked group')}, {ex['single_runs']} on their "
                f"own, {where}")
    if ex.get("rerun_reused_all"):
        text += " (the sweep that trained the runs; the latest rerun reused every one)"
    elif ex.get("runs_reused"):
        text += f"; {_n(ex['runs_reused'], 'run')} reused from an earlier sweep"
    return text


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


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


_VERDICT_WORDS = {"faster": "faster", "slower": "slower",
                  "not resolved": "not distinguishable"}


def _finding(c: dict, arm: str) -> str:
    """`arm` against the contrast's reference in a few words: verdict, ratio, interval."""
    m = _member(c, arm)
    return (f"`{arm}` {_VERDICT_WORDS[m['verdict']]} ({_interval(m['ratio_vs_ref'])} x the "
            f"examples)")


def _others(c: dict) -> list[str]:
    return [m["arm"] for m in c["members"] if m["arm"] != c["ref"]]


def summary(contrasts: dict, spec: dict) -> list[str]:
    """The report's conclusion, from its contrasts: which rules reach the target faster or
    slower than backprop at their best learning rates and under each control (a verdict only
    where the interval excludes 1), and what the fixed-lr comparison alone would have said."""
    lines = ["## Summary", "",
             "Examples needed to reach the target loss, as a multiple of the reference's (95% "
             "bootstrap interval over seeds; faster or slower only where the interval excludes "
             "1):", ""]
    best = contrasts["sgd_best_lr"]
    lines.append(f"- **Each rule at its best learning rate** against `bp` at its own (lr "
                 f"{_member(best, 'bp')['lr']:g}): " +
                 "; ".join(_finding(best, a) for a in _others(best)) + ".")
    for rule in spec.get("gain_match", []):
        c = contrasts.get(f"gain_matched_{rule}_best_lr")
        if c is not None:
            lines.append(f"- **Against backprop given `{rule}`'s per-layer gains** (each at its "
                         f"best lr): {_finding(c, rule)}; {_finding(c, 'bp')}.")
    if "adam_best_lr" in contrasts:
        c = contrasts["adam_best_lr"]
        lines.append("- **Under Adam** (each at its best lr) against `bp+adam`: " +
                     "; ".join(_finding(c, a) for a in _others(c)) + ".")
    fixed = contrasts["sgd_fixed_lr"]
    changed = [a for a in _others(fixed)
               if _member(best, a) and _member(fixed, a)["verdict"] != _member(best, a)["verdict"]]
    if changed:
        lines.append(f"- **The fixed-lr comparison alone** (every rule at lr "
                     f"{spec['fixed_lr']:g}) would have concluded otherwise for " +
                     "; ".join(f"`{a}`: {_VERDICT_WORDS[_member(fixed, a)['verdict']]} "
                               f"({_interval(_member(fixed, a)['ratio_vs_ref'])} x), but "
                               f"{_VERDICT_WORDS[_member(best, a)['verdict']]} at the best "
                               f"learning rates" for a in changed) + ".")
    else:
        lines.append(f"- **The fixed-lr comparison** (every rule at lr {spec['fixed_lr']:g}) "
                     f"reaches the same verdicts as the best learning rates.")
    return lines + [""]


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
    order = plots.layer_order(store, "bp", best["bp"]["lr"], seeds[0])
    figs["gain"] = plots.gains(gain_cs, figdir / "gains.png", order=order)
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731

    first = store.records("bp", best["bp"]["lr"], seeds[0])[0]
    data = first["data"]
    cfg = first["config"]
    first_sync = ("and before the first batch" if cfg.get("sync_at_start") else
                  f"the first sync after {cfg['sync_every']} examples: until then they are FA")
    adam_arms = [a for a in arms if a["optimizer"] == "adam"]
    grids = f"SGD grid {sorted(spec['lrs'])}, fixed lr {spec['fixed_lr']:g}" + (
        f"; Adam grid {sorted(spec['adam_lrs'])}" if adam_arms else "; no Adam arms")
    L = ["# Feedback alignment sweep report", ""]
    L += summary(contrasts, spec)
    L += ["## Setup", "",
          f"- Data: {data['description']} ({data['in_features']} inputs).",
          f"- Model: {_model_text(cfg, data)}, FA layers for every rule "
          f"(backprop = `bp`, B kept equal to W, through the same code).",
          f"- Training: batch {cfg['batch_size']}, {cfg['epochs']:g} "
          f"{'epoch' if cfg['epochs'] == 1 else 'epochs'} "
          f"({int(round(cfg['epochs'] * data['train_examples'])):,} examples), sign rules "
          f"sync B every {cfg['sync_every']} examples "
          f"({first_sync}), "
          f"momentum {cfg['momentum']:g}, "
          f"weight decay {cfg['weight_decay']:g}"
          + (f", learning rate x0.1 at {', '.join(f'{f:.0%}' for f in cfg['lr_drops'])} of "
             "the run" if cfg.get("lr_drops") else "") + ".",
          f"- Seeds: {len(seeds)} per (rule, learning rate); each seed fixes initial weights, "
          f"feedback matrices and data order, and is shared across rules (paired comparisons).",
          f"- {grids}; grids extended by log steps while the best lr sat at an edge (at most "
          f"{spec['max_extend']} times).",
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

    # ---- 1: every rule against backprop, at one lr and at each one's best (each table once)
    L += ["## 1. Examples to reach a target loss: every rule vs backprop", ""]
    for name in ("sgd_fixed_lr", "sgd_best_lr"):
        c = contrasts[name]
        L += [f"### {c['title']}", ""] + [f"- {_sentence(c, a)}" for a in _others(c)] + [""]
        L += _contrast_table(c) + ["", f"![{name}]({rel(figs[name])})", ""]

    # ---- 2: the controls: is an advantage a better direction or only a bigger step?
    controls = [name for name in contrasts if name.startswith("gain_matched_")]
    controls += ["adam_best_lr"] if "adam_best_lr" in contrasts else []
    L += ["## 2. The controls: gain-matched backprop and Adam", ""]
    if not controls:
        L += ["No control in this sweep (`--gain-match` and `--adam-rules` were empty).", ""]
    else:
        L += ["Backprop given a rule's measured per-layer error-signal gains takes the rule's "
              "step sizes with backprop's direction; Adam's per-parameter normalisation "
              "removes most step-size differences. A rule that wins only through its step "
              "size loses that advantage in both.", ""]
    for name in controls:
        c = contrasts[name]
        L += [f"### {c['title']}", ""] + [f"- {_sentence(c, a)}" for a in _others(c)] + [""]
        if name.startswith("gain_matched"):
            gm = c["ref"]
            g = sweep["gains"].get(gm, {})
            lrg = repr(float(_member(c, gm)["lr"]))
            if lrg in g:
                rule = name[len("gain_matched_"):].rsplit("_", 2)[0]
                L += [f"Per-layer learning-rate multipliers given to `{gm}` ({rule}'s measured "
                      f"error-signal norm ratio at that lr): " +
                      ", ".join(f"{k} x{g[lrg][k]:.3g}" for k in
                                [n for n in order if n in g[lrg]] +
                                sorted(set(g[lrg]) - set(order))) + ".", ""]
        L += _contrast_table(c) + ["", f"![{name}]({rel(figs[name])})", ""]

    # ---- 3
    L += ["## 3. Error-signal alignment and gain", ""]
    L += ["Angle between the error signal each layer receives (dL/d output) and the one "
          "backprop would deliver, measured on a fixed probe batch; the last layer always "
          "receives the exact error. Dashed: angle between a layer's B and its W (none for the "
          "first layer, whose B would only carry the error to the input).", "",
          f"![alignment]({rel(figs['align'])})", "",
          "| arm | lr | layer | error angle (mean over training) | first | last | "
          "error norm ratio (geo. mean) |", "|---|---|---|---|---|---|---|"]
    for label, lr in align_members:
        for layer in plots.layer_order(store, label, lr, seeds[0]):
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
