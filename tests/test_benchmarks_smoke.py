"""The benchmark code on tiny shapes for a couple of repetitions, so it cannot rot unnoticed.
Nothing here looks at speed."""
import importlib
import json

import pytest
import torch

from conftest import HAS_SOURCE_TREE, SOURCE_TREE_SKIP_REASON, devices

if not HAS_SOURCE_TREE:
    pytest.skip(SOURCE_TREE_SKIP_REASON, allow_module_level=True)

from benchmarks import layers, markdown, overhead, report  # noqa: E402  (conftest: on sys.path)


@pytest.mark.allocator_stats  # the perturbation rows' peak memory
@pytest.mark.parametrize("device", devices())
def test_report_runs_on_tiny_shapes(device, tmp_path):
    args = report.parse_args(["--device", device, "--tiny", "--out", str(tmp_path)])
    result = report.run(args)
    assert {r["phase"] for r in result["layers"]} == set(layers.PHASES)
    for row in result["layers"] + result["sync"]:
        assert all(ms > 0 for ms in row["median_ms"].values())
    assert result["roofline"]["copy"]["GBps"] > 0
    assert {(r["batch"], r["K"]) for r in result["perturb"]} == {(4, 1), (4, 2)}
    # One row per dtype: the CPU default is float32 alone, CUDA adds bfloat16.
    assert [r["model"] for r in result["conv"]] == ["lenet5/b4"] * len(args.dtypes)
    assert [r["shape"] for r in result["rules"]] == ["mlp16-32-4/b8"] * len(args.dtypes)
    assert all(ms > 0 for ms in result["conv"][0]["median_ms"].values())
    for row in result["perturb"]:
        assert row["peak_extra_bytes"]["batched"] > 0 and row["noise_copies_bytes"] > 0
    text = markdown.report(result)
    assert "fused / nn.Linear" in text and "## Targets" in text
    json.dumps(result, default=str)  # the report's JSON must serialise


def test_report_main_writes_markdown_and_json(tmp_path, capsys):
    assert report.main(["--device", "cpu", "--tiny", "--sections", "sync",
                        "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report-cpu.md").read_text().startswith("# soap_cuda benchmarks")
    assert json.loads((tmp_path / "report-cpu.json").read_text())["sync"]


def test_report_checks_its_arguments():
    with pytest.raises(SystemExit):
        report.parse_args(["--sections", "layers,nope"])
    with pytest.raises(SystemExit):
        report.parse_args(["--dtypes", "int8"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            report.parse_args(["--device", "cuda"])


@pytest.mark.parametrize("suite", ["test_layers", "test_sync", "test_perturbation"])
def test_benchmark_suites_import(suite):
    """The pytest-benchmark suites import (their parameters are built at import)."""
    module = importlib.import_module(f"benchmarks.{suite}")
    assert callable(getattr(module, suite))


def test_overhead_breakdown_runs(capsys):
    assert overhead.main(["--device", "cpu", "--reps", "3"]) == 0
    assert "FALinear module" in capsys.readouterr().out


def test_train_loop_benchmark_runs_on_tiny_data(capsys):
    from benchmarks import train_loop
    assert train_loop.main(["--examples", "256", "--test-examples", "64", "--reps", "1",
                            "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "hand-written loop, no evaluation | " in out and "default evaluation" in out
