"""`soap-cuda reproduce`: the pilot picks each rule's learning rate on validation, the table
reports the best-validation test error of every seed, and a rerun reuses the runs."""
import json

import numpy as np
import pytest

from soap_cuda.cli import main
from soap_cuda.experiments import data as data_mod
from soap_cuda.experiments.idx import write_idx
from soap_cuda.experiments.runs import RunStore
from soap_cuda.experiments.stats import extend_grid


@pytest.fixture
def fashion(tmp_path, monkeypatch):
    """Learnable fake Fashion-MNIST (the class sets a bright square's position) in a fake
    system package folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "pkg"
    folder.mkdir()
    for prefix, n in (("train", 200), ("t10k", 50)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 6, 4:10] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x.astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": [folder], "mnist": []})
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", tmp_path / "nothing")
    return tmp_path


def test_reproduce_chooses_on_validation_and_reports_best_validation_errors(
        fashion, capsys, single_torch_thread):
    out = fashion / "out"
    argv = ["reproduce", "lenet-fashion-mnist", "--epochs", "0.5", "--pilot-epochs", "0.25",
            "--lrs", "0.003,0.1", "--max-extend", "1", "--rules", "bp,fa,dfa", "--seeds", "2",
            "--jobs", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "reproduce.json").read_text())
    # a two-rate grid's best is at an edge: one more rate each, then the table
    assert summary["runs_trained"] == 3 * 3 + 3 * 2
    pilot = RunStore(out / "pilot")
    table = RunStore(out)
    error = lambda rule, lr: 1 - pilot.final(rule, lr, 0)["best_val"]["val_acc"]  # noqa: E731
    for row in summary["rows"]:
        rule = row["rule"]
        first = min((0.003, 0.1), key=lambda lr: (error(rule, lr), lr))
        added = extend_grid([0.003, 0.1], "low" if first == 0.003 else "high")
        grid = sorted([0.003, 0.1, added])
        assert sorted(float(x) for x in summary["pilot"][rule]) == grid
        assert row["lr"] == min(grid, key=lambda lr: (error(rule, lr), lr))
        errors = [100 * table.final(rule, row["lr"], s)["best_val"]["test_error"] for s in (0, 1)]
        assert row["per_seed_pct"] == pytest.approx(errors)
        assert row["test_error_pct"]["estimate"] == pytest.approx(sum(errors) / 2)
        cfg = table.records(rule, row["lr"], 0)[0]["config"]
        assert (cfg["momentum"], cfg["weight_decay"], cfg["batch_size"], cfg["lr_drops"],
                cfg["model"], cfg["val_fraction"]) == (0.9, 1e-3, 64, [0.5, 0.75], "lenet", 0.1)
    text = (out / "reproduce.md").read_text()
    assert "| fa | " in text and "13.06" in text and "| dfa |" in text and "12.81" in text
    assert "best validation" in text
    capsys.readouterr()
    assert not list((out / "runs" / ".stacked").glob("*"))  # no stale plans or checkpoints
    assert main(argv) == 0  # everything on disk: nothing retrained
    assert json.loads((out / "reproduce.json").read_text())["runs_trained"] == 0


def test_reproduce_without_the_data_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": [tmp_path / "no"],
                                                       "mnist": []})
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", tmp_path / "nothing")
    assert main(["reproduce", "lenet-fashion-mnist", "--out", str(tmp_path / "o"),
                 "--no-progress", "--jobs", "1"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
