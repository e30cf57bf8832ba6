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
