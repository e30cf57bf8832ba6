"""The report's figures say what they show: run files written here by hand (a LeNet-like net
with layers net.0, net.3, net.11), read back through RunStore, drawn by plots.py."""
import json
import math

import pytest

from soap_cuda.experiments import plots
from soap_cuda.experiments.runs import RunStore, run_path

LAYERS = ["net.0", "net.3", "net.11"]  # input to output; as text net.11 sorts before net.3


def _write_run(out, label, lr, seed, final_loss, diverged=False, eval_examples=200):
    evals = []
    for i, examples in enumerate(range(0, 1001, 100)):
        loss = math.inf if diverged and i > 2 else 2.0 * (final_loss / 2.0) ** (i / 10)
        layers = {name: {"err_angle_deg": 40.0 - i + j, "err_norm_ratio": 0.6 + 0.2 * j,
                         "bw_angle_deg": 50.0 - i} for j, name in enumerate(LAYERS)}
        evals.append({"kind": "eval", "examples": examples, "train_loss": loss,
                      "test_loss": loss, "layers": layers, "eval_examples": [eval_examples, 100]})
    recs = [{"kind": "config", "config": {"rule": label}, "data": {"train_examples": 1000}},
            *evals, {"kind": "final", "train_loss": math.inf if diverged else final_loss,
                     "diverged": diverged, "examples": 1000}]
    path = run_path(out, label, lr, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(_finite(r)) for r in recs) + "\n")


def _finite(r):
    return {k: (1e308 if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}


@pytest.fixture()
def figures(monkeypatch):
    """The figures as drawn (before they are saved and closed)."""
    drawn = []
    real = plots._save
    def save(fig, path):
        fig.canvas.draw()
        drawn.append({"axes": fig.axes, "texts": [t for ax in fig.axes for t in ax.texts]})
        return real(fig, path)
    monkeypatch.setattr(plots, "_save", save)
    return drawn


def test_curves_say_what_the_loss_was_measured_on_and_what_the_band_is(tmp_path, figures):
    for s in (0, 1):
        _write_run(tmp_path, "bp", 0.1, s, 0.5)
    contrast = {"title": "t", "target_loss": 1.0, "members": [{"arm": "bp", "lr": 0.1}]}
    plots.learning_curves(RunStore(tmp_path), contrast, [0, 1], tmp_path / "c.png")
    ax = figures[0]["axes"][0]
    assert "fixed subset of 200 training examples" in ax.get_ylabel()
    assert "full train set" not in ax.get_ylabel()
    assert "band" in ax.get_title() and "mean over 2 seeds" in ax.get_title()


def test_each_diverged_label_names_its_arm_and_sits_apart(tmp_path, figures):
    arms = [{"label": "bp_gain_matched_sign", "optimizer": "sgd", "lrs": [0.1, 1.0]},
            {"label": "bp_gain_matched_dfa", "optimizer": "sgd", "lrs": [0.1, 1.0]}]
    for a in arms:  # the same colour (gray), both diverged at lr 1
        for s in (0, 1):
            _write_run(tmp_path, a["label"], 0.1, s, 0.5)
            _write_run(tmp_path, a["label"], 1.0, s, 0.5, diverged=True)
    best = {a["label"]: {"lr": 0.1, "score": 0.5} for a in arms}
    plots.lr_sensitivity(RunStore(tmp_path), arms, best, [0, 1], tmp_path / "lr.png")
    labels = [t for t in figures[0]["texts"] if "diverged" in t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(f"{a['label']} diverged" for a in arms)
    assert len({tuple(t.xy) for t in labels}) == 2  # one row each, never on top of another


def test_alignment_in_depth_order_without_the_first_layers_b(tmp_path, figures):
    for s in (0, 1):
        _write_run(tmp_path, "fa", 0.1, s, 0.5)
    plots.alignment(RunStore(tmp_path), [("fa", 0.1)], [0, 1], tmp_path / "a.png")
    axes = figures[0]["axes"]
    assert [ax.get_title().split(":")[0] for ax in axes] == LAYERS
    dashed = [[ln for ln in ax.get_lines() if ln.get_linestyle() == "--"] for ax in axes]
    assert dashed[0] == [] and all(dashed[1:])  # net.0's B is never used


def test_gains_in_depth_order_with_tick_labels_below_one(tmp_path, figures):
    members = [{"arm": "bp", "lr": 0.1, "layers": {}},
               {"arm": "fa", "lr": 0.1, "layers": {n: {"err_norm_ratio": v} for n, v in
                                                   zip(LAYERS, (1.4, 2.6, 1.0))}}]
    plots.gains([{"title": "t", "members": members}], tmp_path / "g.png", order=LAYERS)
    ax = figures[0]["axes"][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    lo, hi = ax.get_ylim()
    below = [t for t in ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] < 1]
    assert below, [t.get_text() for t in ax.get_yticklabels()]
