"""The report's test-error column: with a validation split, each run's best-validation test
error (mean and interval over seeds, as published tables report); without one, the final
test error, labelled as such."""
import math

import pytest

from soap_cuda.experiments.report import write_report
from soap_cuda.experiments.sweep import Sweep, SweepSpec

BASE = dict(dataset="digits", hidden=[16], epochs=1, batch_size=16, train_examples=320,
            test_examples=80, eval_every=80, probe_examples=64, sync_every=80)


def _sweep(out, **base):
    spec = SweepSpec(rules=["bp", "fa"], lrs=[0.1], seeds=2, fixed_lr=0.1, gain_match=[],
                     adam_rules=[], max_extend=0, base={**BASE, **base})
    return Sweep(spec, out, jobs=1).run()


def _member(result, arm):
    c = next(c for c in result["analysis"]["contrasts"] if c["name"] == "sgd_best_lr")
    return c, next(m for m in c["members"] if m["arm"] == arm)


@pytest.mark.parametrize("val", [0.25, 0.0])
def test_column_gives_the_best_validation_test_error(tmp_path, single_torch_thread, val):
    from soap_cuda.experiments.runs import RunStore

    result = _sweep(tmp_path, val_fraction=val)
    store = RunStore(tmp_path)
    c, m = _member(result, "fa")
    finals = [store.final("fa", 0.1, s) for s in (0, 1)]
    if val:
        assert c["test_error_kind"] == "best validation"
        expected = [f["best_val"]["test_error"] for f in finals]
        evals = [store.evals("fa", 0.1, s) for s in (0, 1)]
        # the chosen evaluation really is the best by validation, not the last one
        for e, f in zip(evals, finals):
            assert f["best_val"]["val_acc"] == max(r["val_acc"] for r in e)
    else:
        assert c["test_error_kind"] == "final"
        expected = [1 - f["test_acc"] for f in finals]
    assert m["test_error"]["estimate"] == pytest.approx(sum(expected) / 2)
    report = write_report(tmp_path).read_text()
    kind = "best validation" if val else "final"
    assert f"test error % ({kind})" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| fa | 0.1 |"))
    assert f"{100 * sum(expected) / 2:.3g}" in row
    assert not math.isnan(m["test_error"]["lo"])
