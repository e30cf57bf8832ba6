"""Data without a flag: Fashion-MNIST found where its system package installs it, the decoded
IDX cache (reused, rebuilt when a file changes, never trusted when corrupt), the validation
split, and the best-validation record it feeds."""
import json
import os

import numpy as np
import pytest
import torch

from soap_cuda.experiments import data as data_mod
from soap_cuda.experiments import idx_cache
from soap_cuda.experiments.config import TrainConfig
from soap_cuda.experiments.data import DataError, load_dataset, validation_split
from soap_cuda.experiments.idx import write_idx
from soap_cuda.experiments.train import best_validation, train

PREFIXES = (("train", 60), ("t10k", 20))


def _write_package(folder, seed=1, gz=True):
    """The four IDX files, flat, as Debian's dataset-fashion-mnist installs them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for prefix, n in PREFIXES:
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}",
                  np.arange(n, dtype=np.uint8) % 10)
    return folder


@pytest.fixture
def system(tmp_path, monkeypatch):
    """A fake system package folder, no ./data, and a cache of the test's own."""
    package = tmp_path / "usr/share/datasets/fashion-mnist"
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": [package], "mnist": []})
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", tmp_path / "data")
    monkeypatch.setenv("SOAP_CUDA_CACHE", str(tmp_path / "cache"))
    return package


def test_fashion_mnist_is_found_in_the_system_package_without_a_data_dir(system):
    _write_package(system)
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60, 784) and ds.x_test.shape == (20, 784)
    assert str(system) in ds.description


def test_data_dir_of_the_user_comes_before_the_system_package(system, tmp_path):
    _write_package(system, seed=1)
    _write_package(tmp_path / "data", seed=2)
    local = load_dataset("fashion-mnist")
    assert str(tmp_path / "data") in local.description
    assert not torch.equal(local.x_train, load_dataset("fashion-mnist", system).x_train)


def test_absent_data_gives_one_line_saying_how_to_install(system):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist")
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(system) in msg and "--data-dir" in msg


def test_cli_prints_that_line_and_exits_2(system, capsys):
    from soap_cuda.cli import main

    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "0.1", "--no-progress",
                 "--out", str(system.parent / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install dataset-fashion-mnist" in err


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").glob("*.npy"))


def test_cache_is_reused(system, tmp_path, monkeypatch):
    _write_package(system)
    first = load_dataset("fashion-mnist")
    assert len(_entries(tmp_path)) == 4
    monkeypatch.setattr(idx_cache, "read_idx", lambda p: pytest.fail(f"decoded {p} again"))
    again = load_dataset("fashion-mnist")
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)


def test_cache_is_rebuilt_when_a_file_changes(system, tmp_path):
    _write_package(system, seed=1)
    before = load_dataset("fashion-mnist")
    _write_package(system, seed=2)  # new contents, size equal: the mtime tells
    os.utime(system / "train-images-idx3-ubyte.gz", ns=(1, 1))
    after = load_dataset("fashion-mnist")
    assert not torch.equal(before.x_train, after.x_train)
    fresh = load_dataset("fashion-mnist", system)
    assert torch.equal(after.x_train, fresh.x_train)


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar"])
def test_a_corrupt_cache_entry_is_rebuilt_not_trusted(system, tmp_path, damage):
    _write_package(system)
    good = load_dataset("fashion-mnist")
    entry = next((tmp_path / "cache").glob("train-images*.npy"))
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(raw[:len(raw) // 2]))
    elif damage == "flip":
        raw[-100] ^= 0xFF  # a pixel: the header still parses, only the checksum can tell
        entry.write_bytes(bytes(raw))
    else:
        entry.with_suffix(".json").write_text("{not json")
    again = load_dataset("fashion-mnist")
    assert torch.equal(good.x_train, again.x_train)
    meta = json.loads(entry.with_suffix(".json").read_text())  # rewritten whole
    assert meta["crc32"] == idx_cache._crc(np.load(entry))


def test_a_read_only_cache_only_costs_the_decoding(system, tmp_path, monkeypatch):
    _write_package(system)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SOAP_CUDA_CACHE", str(blocker / "cache"))
    assert load_dataset("fashion-mnist").x_train.shape == (60, 784)


def test_mnist_loads_from_idx_files_the_test_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("SOAP_CUDA_CACHE", str(tmp_path / "cache"))
    _write_package(tmp_path / "mnist", gz=False)
    ds = load_dataset("mnist", tmp_path / "mnist", val_fraction=0.25)
    # 6 of each class, 2 of them (round(1.5)) held out
    assert ds.x_train.shape == (40, 784) and ds.x_val.shape == (20, 784)


def test_validation_split_is_disjoint_stratified_and_fixed_by_its_seed():
    y = np.repeat(np.arange(10), 50)
    train, val = validation_split(y, 0.1, seed=0)
    assert len(val) == 50 and len(train) == 450
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(500))
    assert np.bincount(y[val]).tolist() == [5] * 10  # every class, in proportion
    again, _ = validation_split(y, 0.1, seed=0)
    other, other_val = validation_split(y, 0.1, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(val, other_val)
    with pytest.raises(DataError):
        validation_split(y, 1.0)


def test_validation_examples_leave_the_training_set():
    full = load_dataset("digits")
    ds = load_dataset("digits", val_fraction=0.2)
    assert len(ds.y_train) + len(ds.y_val) == len(full.y_train)
    assert torch.equal(ds.y_test, full.y_test)
    rows = {tuple(r) for r in (ds.x_train * 1000).round().int().tolist()}
    assert not any(tuple(r) in rows for r in (ds.x_val * 1000).round().int().tolist())
    assert abs(float(ds.x_train.mean())) < 1e-4  # standardised by the remaining examples


def test_every_evaluation_measures_validation_and_the_final_record_picks_the_best():
    data = load_dataset("digits", train_examples=400, test_examples=100, val_fraction=0.25)
    cfg = TrainConfig(rule="fa", lr=0.05, epochs=2, batch_size=32, hidden=[32],
                      dataset="digits", eval_every=100, eval_examples=50, val_fraction=0.25)
    records = train(cfg, data=data)
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(r["val_acc"] is not None and r["eval_examples"][1] == 100 for r in evals)
    best = max(evals, key=lambda r: (r["val_acc"], -r["examples"]))
    final = records[-1]
    assert final["best_val"]["examples"] == best["examples"]
    assert final["best_val"]["test_error"] == pytest.approx(1 - best["test_acc"])


def test_best_validation_skips_diverged_evaluations_and_takes_the_earliest_tie():
    evals = [{"kind": "eval", "examples": e, "val_acc": a, "val_loss": 1.0, "test_acc": t}
             for e, a, t in ((0, 0.1, 0.1), (10, 0.8, 0.7), (20, 0.8, 0.9))]
    evals.append({"kind": "eval", "examples": 30, "val_acc": 0.9, "val_loss": 1.0,
                  "test_acc": 0.95, "diverged": True})
    best = best_validation(evals)
    assert best["examples"] == 10 and best["test_error"] == pytest.approx(0.3)
    assert best_validation([{"kind": "eval", "examples": 0, "val_acc": None}]) is None


def test_runs_written_before_the_validation_field_are_still_complete(tmp_path):
    from soap_cuda.experiments.runs import is_complete

    cfg = TrainConfig(rule="fa", dataset="digits").to_dict()
    old = {k: v for k, v in cfg.items() if k != "val_fraction"}
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"kind": "config", "config": old}) + "\n" +
                    json.dumps({"kind": "final"}) + "\n")
    assert is_complete(path, cfg)
    assert not is_complete(path, {**cfg, "val_fraction": 0.1})
