"""The soap-cuda command: help, one-line errors, and a tiny train run with resume."""
import json
import os
import subprocess
import sys

import pytest

from soap_cuda.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "--help"],
                                  ["report", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: soap-cuda" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["train", "--rule", "nope"], "invalid choice"),
    (["train", "--lr", "-1"], "positive"),
    (["sweep", "--lrs", "0.1,abc"], "numbers"),
    (["sweep", "--seeds", "0"], "positive"),
    (["train", "--hidden", "10,x"], "integers"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,msg", [
    (["sweep", "--rules", "fa,sign"], "must include bp"),
    (["report", "/nonexistent/dir"], "sweep.json"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "--download"),
    (["train", "--rule", "sign", "--sync-every", "none"], "sync-every"),
])
def test_domain_errors_are_one_line(argv, msg, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--dataset", "digits", "--train-examples", "128", "--test-examples",
              "32", "--hidden", "8", "--batch-size", "16", "--eval-every", "64", "--rule",
              "rescaled_sign", "--sync-every", "32", "--lr", "0.05", "--probe-examples", "32",
              "--out", str(out), "--no-progress"]
    assert main(common + ["--epochs", "1"]) == 0
    assert "checkpoint" in capsys.readouterr().out
    assert main(common + ["--epochs", "2"]) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(common + ["--epochs", "2", "--resume"]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["kind"] == "config" and recs[-1]["kind"] == "final"
    assert recs[-1]["examples"] == 256


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "soap_cuda", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "sweep" in r.stdout


@pytest.mark.parametrize("argv,jobs", [
    (["sweep"], os.cpu_count() or 1), (["sweep", "--device", "cuda"], 1),
    (["sweep", "--device", "cuda:1", "--sequential"], os.cpu_count() or 1),
    (["sweep", "--device", "cuda", "--jobs", "3"], 3)])
def test_sweep_processes_by_default(argv, jobs):
    """One process per GPU for stacked models (a GPU runs one process's kernels at a time),
    one per core otherwise."""
    from soap_cuda.cli import _sweep_jobs, build_parser
    assert _sweep_jobs(build_parser().parse_args(argv)) == jobs


TINY_TRAIN = ["train", "--dataset", "digits", "--train-examples", "64", "--test-examples", "32",
              "--hidden", "8", "--batch-size", "16", "--epochs", "1", "--probe-examples", "16",
              "--no-progress"]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_missing_cuda_device_is_one_line(command, capsys, tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    argv = (TINY_TRAIN if command == "train" else ["sweep", "--no-progress"])
    assert main(argv + ["--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("under", [False, True])
def test_out_naming_a_file_is_one_line(command, under, capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    out = f / "sub" if under else f
    argv = TINY_TRAIN if command == "train" else ["sweep", "--no-progress"]
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{f} is a file, not a directory" in err and len(err.strip().splitlines()) == 1
    assert "Errno" not in err


def test_resume_without_a_checkpoint_says_it_starts_over(capsys, tmp_path):
    assert main(TINY_TRAIN + ["--out", str(tmp_path / "r"), "--resume"]) == 0
    assert "no checkpoint at" in capsys.readouterr().err


def test_ctrl_c_on_train_speaks_of_train(capsys, tmp_path, monkeypatch):
    import soap_cuda.experiments.train as train_module

    def interrupted(*args, on_step=None, **kw):  # Ctrl-C after the first step
        def stop(examples):
            raise KeyboardInterrupt
        return real(*args, on_step=stop, **kw)
    real = train_module.train
    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(TINY_TRAIN + ["--out", str(tmp_path / "c")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("soap-cuda train: interrupted") and "sweep" not in err
    assert len(err.strip().splitlines()) == 1


def test_help_texts():
    from soap_cuda.cli import build_parser
    parser = build_parser()
    top = parser.format_help()
    assert "one MLP" not in top and "LeNet-5" in top
    sweep = parser._subparsers._group_actions[0].choices["sweep"].format_help()
    assert "95%%" not in sweep and "95%" in sweep


@pytest.mark.parametrize("argv,graphs", [([], None), (["--graphs"], True),
                                         (["--no-graphs"], False)])
def test_sweep_graphs_default_to_the_device(argv, graphs):
    """`soap-cuda sweep` graphs its stacked groups on CUDA unless --no-graphs (None: decided
    by the device in train_batched)."""
    from soap_cuda.cli import build_parser
    assert build_parser().parse_args(["sweep", *argv]).graphs is graphs
