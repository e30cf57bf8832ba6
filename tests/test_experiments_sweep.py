"""A tiny sweep end to end (real digits, in-process): grid extension, gain-matched backprop,
Adam arms, analysis, report with figures, and reuse of finished runs."""
import json
import re

import pytest

from soap_cuda.experiments.controls import gain_matched_label
from soap_cuda.experiments.optimizers import ConfigError
from soap_cuda.experiments.report import write_report
from soap_cuda.experiments.runs import run_path
from soap_cuda.experiments.sweep import Sweep, SweepSpec

BASE = dict(dataset="digits", hidden=[16], epochs=1, batch_size=16, train_examples=320,
            test_examples=80, eval_every=80, probe_examples=64, sync_every=80)


def spec(**kw):
    d = dict(rules=["bp", "fa", "sign", "dfa"], lrs=[0.01, 0.1], seeds=2, fixed_lr=0.01,
             gain_match=["sign", "dfa"], adam_rules=["bp", "sign"], adam_lrs=[1e-3], max_extend=1,
             base=BASE)
    d.update(kw)
    return SweepSpec(**d)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, single_torch_thread):
    out = tmp_path_factory.mktemp("sweep")
    result = Sweep(spec(), out, jobs=1).run()
    return out, result


def test_sweep_bookkeeping(swept):
    out, result = swept
    arms = {a["label"]: a for a in result["arms"]}
    assert set(arms) == {"bp", "fa", "sign", "dfa", gain_matched_label("sign"),
                         gain_matched_label("dfa"), "bp+adam", "sign+adam"}
    # A single-lr Adam grid has its best "at the edge" by definition: it must have been extended
    # once and then flagged.
    assert len(arms["bp+adam"]["lrs"]) == 3 and "added lr 0.000316, 0.00316" in \
        arms["bp+adam"]["notes"][0]
    best = result["analysis"]["best_lr"]
    for label, a in arms.items():
        assert best[label]["lr"] in a["lrs"]
        for lr in a["lrs"]:
            for s in result["seeds"]:
                assert run_path(out, label, lr, s).is_file()
    # Gain-matched backprop got sign's measured gain on fc1, and exactly 1 on the output layer.
    gains = result["gains"][gain_matched_label("sign")]
    g = gains[repr(0.01)]
    assert g["fc1"] > 1.0 and g["fc2"] == pytest.approx(1.0, abs=1e-6)
    cfg = json.loads(run_path(out, gain_matched_label("sign"), 0.01, 0).read_text()
                     .splitlines()[0])["config"]
    assert cfg["rule"] == "bp" and cfg["layer_lr_scale"] == pytest.approx(g)


def test_contrasts(swept):
    _, result = swept
    cs = {c["name"]: c for c in result["analysis"]["contrasts"]}
    assert set(cs) == {"sgd_fixed_lr", "sgd_best_lr", "gain_matched_sign_fixed_lr",
                       "gain_matched_sign_best_lr", "gain_matched_dfa_fixed_lr",
                       "gain_matched_dfa_best_lr", "adam_best_lr"}
    for c in cs.values():
        ref = next(m for m in c["members"] if m["arm"] == c["ref"])
        assert ref["verdict"] == "reference"
        assert ref["ratio_vs_ref"]["estimate"] == pytest.approx(1.0)
        for m in c["members"]:
            r = m["ratio_vs_ref"]
            assert m["verdict"] in ("reference", "faster", "slower", "not resolved")
            if r["bound"] == "exact":
                assert r["lo"] <= r["estimate"] <= r["hi"]
    fixed = cs["sgd_fixed_lr"]
    assert all(m["lr"] == 0.01 for m in fixed["members"])


def test_report_writes_markdown_and_pngs(swept):
    out, _ = swept
    path = write_report(out, target_loss=1.5)  # one call: rendering is the slow part
    text = path.read_text()
    assert "Target training loss 1.5 (set by the user)" in text
    for heading in ("## Summary", "## 1.", "## 2.", "### dfa vs gain-matched backprop",
                    "## 3.", "gain-matched", "Adam"):
        assert heading in text
    # every contrast's table once: no section repeats another's
    contrasts = write_report.__globals__["analyze"](
        json.loads((out / "sweep.json").read_text())["spec"] | {"target_loss": 1.5},
        json.loads((out / "sweep.json").read_text())["arms"], [0, 1],
        write_report.__globals__["RunStore"](out))["contrasts"]
    assert text.count("| arm | lr | examples to target") == len(contrasts)
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert {"lr_sensitivity.png", "alignment.png", "gains.png",
            "curves_sgd_fixed_lr.png"} <= set(figs)
    for name in figs:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}" in text


def test_rerun_reuses_finished_runs(swept):
    out, result = swept
    files = sorted((out / "runs").rglob("*.jsonl"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = Sweep(spec(), out, jobs=1).run()
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again["analysis"]["best_lr"] == result["analysis"]["best_lr"]
    # the figures stay those of the sweep that trained the runs, not "0 runs in 0 s"
    assert again["wall_s"] == result["wall_s"]
    assert again["execution"]["runs_trained"] == result["execution"]["runs_trained"] > 0
    assert again["execution"]["rerun_reused_all"]
    text = write_report(out).read_text()
    assert f"{result['execution']['runs_in_stacked_groups']} runs in" in text
    assert "the latest rerun reused every one" in text


@pytest.mark.parametrize("kw,msg", [(dict(rules=["fa", "sign"]), "include bp"),
                                    (dict(seeds=1), "2 seeds"),
                                    (dict(gain_match=["rescaled_sign"]), "gain-match"),
                                    (dict(adam_rules=["sign"]), "adam-rules"),
                                    (dict(rules=["bp", "bogus"], gain_match=[]), "unknown rule")])
def test_spec_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        spec(**kw).validate()


def test_sgd_momentum_does_not_reach_the_adam_arms(tmp_path):
    from soap_cuda.experiments.sweep import Arm

    sweep = Sweep(spec(base={**BASE, "momentum": 0.9}), tmp_path, jobs=1)
    sgd = sweep.config(Arm("bp", "bp", "sgd", [0.1]), 0.1, 0)
    adam = sweep.config(Arm("bp_adam", "bp", "adam", [1e-3]), 1e-3, 0)
    assert sgd.momentum == 0.9 and adam.momentum == 0.0


def test_batched_and_sequential_sweeps_agree(tmp_path):
    """The default (stacked models) and --sequential give the same analysis; finished runs of
    an interrupted batched sweep are kept and only the rest rerun."""
    small = spec(rules=["bp", "fa", "sign", "dfa"], lrs=[0.03, 0.1], gain_match=["sign"],
                 adam_rules=[], max_extend=0)
    batched = Sweep(small, tmp_path / "b", jobs=1).run()
    sequential = Sweep(small, tmp_path / "s", jobs=1, batched=False).run()
    assert batched["execution"]["mode"] == "batched"
    # SGD arms (DFA's models stacked apart: their B have another shape), then gain-matched bp
    assert batched["execution"]["stacked_groups"] == 3
    assert batched["execution"]["single_runs"] == 0
    assert sequential["execution"]["stacked_groups"] == 0
    for cb, cs in zip(batched["analysis"]["contrasts"], sequential["analysis"]["contrasts"]):
        for mb, ms in zip(cb["members"], cs["members"]):
            assert mb["arm"] == ms["arm"] and mb["lr"] == ms["lr"]
            assert mb["final_train_loss"]["estimate"] == pytest.approx(
                ms["final_train_loss"]["estimate"], rel=1e-4)
            assert mb["ratio_vs_ref"]["estimate"] == pytest.approx(
                ms["ratio_vs_ref"]["estimate"], rel=1e-3)

    # interrupted: two runs of the SGD group lost; the rest stays as it was
    lost = [run_path(tmp_path / "b", "sign", 0.1, 0), run_path(tmp_path / "b", "fa", 0.03, 1)]
    before = {p: p.read_text() for p in (tmp_path / "b" / "runs").rglob("*.jsonl")}
    kept = {p: t for p, t in before.items() if p not in lost}
    for p in lost:
        p.unlink()
    again = Sweep(small, tmp_path / "b", jobs=1).run()
    assert again["execution"]["runs_trained"] == 2
    for p, text in kept.items():
        assert p.read_text() == text
    for p in lost:
        new = [json.loads(line) for line in p.read_text().splitlines()]
        old = [json.loads(line) for line in before[p].splitlines()]
        assert new[-1]["train_loss"] == pytest.approx(old[-1]["train_loss"], rel=1e-5)


def test_stacks_are_split_across_processes_and_capped_by_architecture():
    from soap_cuda.experiments.config import TrainConfig
    from soap_cuda.experiments.sweep import MAX_STACKED, plan_units

    def tasks(model, n):
        return [(TrainConfig(rule="fa", lr=0.1, seed=s, model=model).to_dict(), f"{model}{s}")
                for s in range(n)]
    assert [len(u) for u in plan_units(tasks("mlp", 100), True, jobs=1)] == [100]
    assert [len(u) for u in plan_units(tasks("mlp", 100), True, jobs=2)] == [50, 50]
    cap = MAX_STACKED["resnet20"]
    sizes = [len(u) for u in plan_units(tasks("resnet20", 3 * cap + 1), True, jobs=1)]
    assert max(sizes) <= cap and sum(sizes) == 3 * cap + 1
    assert [len(u) for u in plan_units(tasks("lenet", 3), False, jobs=1)] == [1, 1, 1]


def _count(text: str) -> float:
    return float(text[:-1]) * {"k": 1e3, "M": 1e6}[text[-1]] if text[-1] in "kM" else float(text)


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_counts_training_examples_as_they_are_done(tmp_path, capsys, jobs):
    """The bar moves with the steps of every unit (in this process, or reported by the
    workers), not once a stack ends: examples done of those planned, with steps per second."""
    small = spec(rules=["bp", "fa"], lrs=[0.1], fixed_lr=0.1, gain_match=[], adam_rules=[],
                 max_extend=0,
                 base={**BASE, "epochs": 30, "eval_every": 1600})  # ~1 s of training
    Sweep(small, tmp_path, jobs=jobs, progress=True).run()
    err = capsys.readouterr().err
    states = [(_count(a), _count(b)) for a, b in re.findall(r"\| *([\d.]+[kM]?)/([\d.]+[kM]?) \[",
                                                             err)]
    planned = 2 * 2 * 30 * 320  # arms x seeds x epochs x training examples
    assert states and all(total == pytest.approx(planned, rel=1e-2) for _, total in states)
    assert states[-1][0] == pytest.approx(planned, rel=1e-2)
    assert any(0 < done < planned * 0.9 for done, _ in states), states  # within the stacks
    assert "steps/s" in err and "ex/s" in err


@pytest.fixture(scope="module")
def deep(tmp_path_factory, single_torch_thread):
    """An 11-layer MLP (fc1 ... fc11: as text fc10 sorts before fc2), no Adam arms."""
    out = tmp_path_factory.mktemp("deep")
    small = spec(rules=["bp", "fa", "sign"], lrs=[0.03, 0.3], fixed_lr=0.03, gain_match=["sign"],
                 adam_rules=[], max_extend=0, base={**BASE, "hidden": [8] * 10})
    return out, Sweep(small, out, jobs=1).run(), write_report(out).read_text()


def test_report_opens_with_its_conclusion(deep):
    """The summary's verdicts are the analysis's, rule by rule, before the setup."""
    _, result, text = deep
    assert text.index("## Summary") < text.index("## Setup")
    summary = text[text.index("## Summary"):text.index("## Setup")]
    cs = {c["name"]: c for c in result["analysis"]["contrasts"]}
    words = {"faster": "faster", "slower": "slower", "not resolved": "not distinguishable"}
    for name in ("sgd_best_lr", "gain_matched_sign_best_lr"):
        for m in cs[name]["members"]:
            if m["arm"] != cs[name]["ref"]:
                assert f"`{m['arm']}` {words[m['verdict']]} (" in summary
    fixed = {m["arm"]: m["verdict"] for m in cs["sgd_fixed_lr"]["members"]}
    at_best = {m["arm"]: m["verdict"] for m in cs["sgd_best_lr"]["members"]}
    changed = [a for a in fixed if a != "bp" and fixed[a] != at_best[a]]
    if changed:
        assert "would have concluded otherwise for" in summary
        assert all(f"`{a}`: {words[fixed[a]]}" in summary for a in changed)
    else:
        assert "reaches the same verdicts" in summary
    assert "Reading: an advantage" not in text  # the template paragraph is gone


def test_report_setup_and_alignment_table(deep):
    _, _, text = deep
    setup = text[text.index("## Setup"):text.index("## Best")]
    assert "Adam grid" not in setup and "no Adam arms" in setup
    rows = [ln.split(" | ")[2] for ln in text.splitlines() if ln.startswith("| fa | ")
            and " | fc" in ln and "°" in ln]
    assert rows == [f"fc{i}" for i in range(1, 12)]  # by depth, not as text


def test_dfa_runs_stack_with_each_other_across_optimizers(tmp_path):
    """A DFA arm and its Adam arm train in one phase and one stack (as do the other rules'
    SGD and Adam runs), not as four groups and not as single runs after the rest."""
    small = spec(rules=["bp", "fa", "dfa"], lrs=[0.1], fixed_lr=0.1, gain_match=[],
                 adam_rules=["bp", "dfa"], adam_lrs=[1e-3], max_extend=0)
    ex = Sweep(small, tmp_path, jobs=1).run()["execution"]
    assert (ex["stacked_groups"], ex["single_runs"], ex["runs_in_stacked_groups"]) == (2, 0, 10)
    dfa_stacks = {json.loads(run_path(tmp_path, label, lr, s).read_text().splitlines()[0])
                  ["batched"]["models"] for label, lr in (("dfa", 0.1), ("dfa+adam", 1e-3))
                  for s in (0, 1)}
    assert dfa_stacks == {4}


def test_a_graphed_sweep_gives_the_same_runs(tmp_path):
    """Sweep(graphs=True) (`soap-cuda sweep --graphs`): every stacked group through
    graphed_step; on the CPU the same step eagerly on the device schedule, so the same runs,
    bit for bit."""
    small = spec(rules=["bp", "fa", "sign"], lrs=[0.1], gain_match=[], adam_rules=["bp"],
                 adam_lrs=[1e-3], max_extend=0)
    plain = Sweep(small, tmp_path / "p", jobs=1).run()
    graphed = Sweep(small, tmp_path / "g", jobs=1, graphs=True).run()
    assert graphed["execution"]["graphs"] and not plain["execution"]["graphs"]
    assert graphed["execution"]["stacked_groups"] >= 1
    runs = sorted(p.relative_to(tmp_path / "p") for p in (tmp_path / "p" / "runs").rglob("*.jsonl"))
    assert runs
    for rel in runs:
        drop = ("wall_s", "elapsed_s", "env")
        read = lambda root: [{k: v for k, v in json.loads(line).items() if k not in drop}
                             for line in (root / rel).read_text().splitlines()]
        assert read(tmp_path / "g") == read(tmp_path / "p"), rel
