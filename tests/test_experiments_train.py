"""Training runs end to end on real digits (tiny): records, metrics, exact resume, controls."""
import math

import pytest
import torch

from soap_cuda.experiments.config import TrainConfig
from soap_cuda.experiments.data import load_dataset
from soap_cuda.experiments.models import build_mlp
from soap_cuda.experiments.optimizers import ConfigError, make_optimizer
from soap_cuda.experiments.train import read_records, train


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_examples=256, test_examples=64)


def cfg(**kw):
    base = dict(dataset="digits", hidden=[16], epochs=2, batch_size=16, eval_every=64,
                probe_examples=64, sync_every=64, lr=0.05)
    base.update(kw)
    return TrainConfig(**base)


def evals(records):
    return [r for r in records if r["kind"] == "eval"]


def test_digits_dataset_is_real_and_standardised(digits):
    assert digits.x_train.shape == (256, 64) and digits.num_classes == 10
    assert set(digits.y_train.tolist()) == set(range(10))
    assert abs(float(digits.x_train.mean())) < 0.2


def test_records_and_metrics(digits, tmp_path):
    recs = train(cfg(rule="sign"), out_path=tmp_path / "m.jsonl", data=digits)
    assert [r["kind"] for r in recs][0] == "config" and recs[-1]["kind"] == "final"
    ev = evals(recs)
    assert [r["examples"] for r in ev] == list(range(0, 513, 64))
    assert ev[-1]["train_loss"] < ev[0]["train_loss"]
    assert read_records(tmp_path / "m.jsonl") == recs
    fc1 = ev[-1]["layers"]["fc1"]
    # sign(W) has entries of size 1, far above xavier-sized B0: the error reaching fc1 grows.
    assert fc1["err_norm_ratio"] > 2.0 and 0 < fc1["err_angle_deg"] < 90
    assert ev[-1]["layers"]["fc2"]["err_angle_deg"] == pytest.approx(0.0, abs=1e-4)


def test_bp_rule_is_backprop(digits):
    ev = evals(train(cfg(rule="bp", epochs=0.5), data=digits))
    for layer in ("fc1", "fc2"):
        assert ev[-1]["layers"][layer]["err_angle_deg"] == pytest.approx(0.0, abs=1e-3)
        assert ev[-1]["layers"][layer]["err_norm_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_same_seed_same_run_other_seed_differs(digits):
    a = evals(train(cfg(rule="fa", seed=3, epochs=0.5), data=digits))
    b = evals(train(cfg(rule="fa", seed=3, epochs=0.5), data=digits))
    c = evals(train(cfg(rule="fa", seed=4, epochs=0.5), data=digits))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in c]


@pytest.mark.parametrize("rule,opt", [("random_sign", "sgd"), ("rescaled_sign", "adam")])
def test_resume_is_exact(digits, tmp_path, rule, opt):
    kw = dict(rule=rule, optimizer=opt, momentum=0.9 if opt == "sgd" else 0.0,
              lr=0.01 if opt == "sgd" else 0.003)
    full = train(cfg(epochs=2, **kw), checkpoint_path=tmp_path / "full.pt", data=digits)
    train(cfg(epochs=1, **kw), checkpoint_path=tmp_path / "part.pt", data=digits)
    resumed = train(cfg(epochs=2, **kw), out_path=tmp_path / "r.jsonl",
                    checkpoint_path=tmp_path / "part.pt", resume=True, data=digits)
    key = lambda rs: [(r["examples"], r["train_loss"], r["test_loss"]) for r in evals(rs)]
    assert key(resumed) == key(full)
    a = torch.load(tmp_path / "full.pt", weights_only=False)
    b = torch.load(tmp_path / "part.pt", weights_only=False)
    for k in a["model"]:
        if torch.is_tensor(a["model"][k]):
            assert torch.equal(a["model"][k], b["model"][k]), k
        else:
            assert a["model"][k] == b["model"][k], k
    assert key(read_records(tmp_path / "r.jsonl")) == key(full)


def test_resume_refuses_other_settings(digits, tmp_path):
    train(cfg(rule="fa", epochs=0.25), checkpoint_path=tmp_path / "c.pt", data=digits)
    with pytest.raises(RuntimeError, match="lr"):
        train(cfg(rule="fa", epochs=0.5, lr=0.5), checkpoint_path=tmp_path / "c.pt",
              resume=True, data=digits)


def test_divergence_is_recorded(digits):
    recs = train(cfg(rule="sign", lr=1e8, epochs=1, activation="relu"), data=digits)
    assert recs[-1]["diverged"] and math.isinf(recs[-1]["train_loss"])


def test_layer_lr_scale_sets_per_layer_learning_rates():
    torch.manual_seed(0)
    model = build_mlp(8, [4], 3, "bp")
    opt = make_optimizer(model, "bp", "sgd", 0.1, layer_lr_scale={"fc1": 12.0, "fc2": 1.0})
    assert {g["layer"]: g["lr"] for g in opt.param_groups} == {"fc1": pytest.approx(1.2),
                                                               "fc2": pytest.approx(0.1)}
    with pytest.raises(ConfigError, match="fc2"):
        make_optimizer(model, "bp", "sgd", 0.1, layer_lr_scale={"fc1": 2.0})


def test_gain_matched_bp_follows_the_scaled_step(digits):
    """One SGD step of bp with fc1's lr x g moves fc1 by exactly g times plain bp's step."""
    x, y = digits.x_train[:32], digits.y_train[:32]
    moves = []
    for scale in (None, {"fc1": 7.0, "fc2": 1.0}):
        torch.manual_seed(0)
        model = build_mlp(64, [16], 10, "bp")
        w0 = model.fc1.weight.detach().clone()
        opt = make_optimizer(model, "bp", "sgd", 0.1, layer_lr_scale=scale)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moves.append(model.fc1.weight.detach() - w0)
    torch.testing.assert_close(moves[1], 7.0 * moves[0])


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown rule"):
        TrainConfig(rule="nope")
    with pytest.raises(ConfigError, match="sync-every"):
        TrainConfig(rule="sign", sync_every=None)
    with pytest.raises(ConfigError, match="positive"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="momentum"):
        make_optimizer(build_mlp(4, [2], 2), "fa", "adam", 0.1, momentum=0.9)


def test_evaluations_use_fixed_subsets_and_the_final_one_the_whole_test_set(digits):
    recs = train(cfg(eval_examples=100), data=digits)
    ev = evals(recs)
    assert all(r["eval_examples"] == [100, 64] for r in ev[:-1])  # test split (64) is smaller
    assert ev[-1]["eval_examples"] == [100, 64]
    full = evals(train(cfg(eval_examples=0), data=digits))
    assert all(r["eval_examples"] == [256, 64] for r in full)
    # the same examples for every run: the seed changes the model, not the evaluation subset
    from soap_cuda.experiments.train import eval_subsets
    a, final = eval_subsets(digits, 100)
    b, _ = eval_subsets(digits, 100)
    assert torch.equal(a.x_train, b.x_train) and len(final.y_test) == len(digits.y_test)
    assert len(set(a.y_train.tolist())) == 10  # a random subset, not the first classes


def test_alignment_is_measured_every_kth_evaluation(digits):
    ev = evals(train(cfg(align_every=3), data=digits))
    with_layers = [i for i, r in enumerate(ev) if r["layers"]]
    assert with_layers == [0, 1, 2, 3, 6, len(ev) - 1]  # the first 3 (the fast start), every 3rd


def test_checkpoints_by_time_unless_told_every_k_evaluations(digits, tmp_path, monkeypatch):
    import soap_cuda.experiments.train as train_module
    writes = []
    real = train_module._save_checkpoint
    monkeypatch.setattr(train_module, "_save_checkpoint",
                        lambda path, state: (writes.append(state["position"]["evals"]),
                                             real(path, state)))
    train(cfg(), checkpoint_path=tmp_path / "a.pt", data=digits)
    assert len(writes) == 1  # a short run: only the final checkpoint
    writes.clear()
    train(cfg(), checkpoint_path=tmp_path / "b.pt", data=digits, checkpoint_every_evals=2)
    assert len(writes) == 5  # evaluations 2, 4, 6, 8 and the end
    writes.clear()
    monkeypatch.setattr(train_module, "CHECKPOINT_INTERVAL_S", 0.0)
    train(cfg(), checkpoint_path=tmp_path / "c.pt", data=digits)
    assert len(writes) == 8  # each of the 7 intermediate evaluations, and the end


def test_soap_measures_its_losses_in_one_float64_pass(digits, monkeypatch):
    """train() hands SOAP the batch: the three losses of a step come from one batched pass of
    per-example float64 sums, never from float32 closure calls at shifted weights (whose
    rounding would drown the curvature, a second difference)."""
    from soap_cuda.optim import SOAP

    def no_closure_losses(*args, **kwargs):
        raise AssertionError("SOAP fell back to closure losses")
    monkeypatch.setattr(SOAP, "_closure_loss", no_closure_losses)
    seen = []
    original = SOAP.step

    def step(self, closure, inputs=None, targets=None):
        loss = original(self, closure, inputs, targets)
        seen.append((self.history[-1]["kind"], self.history[-1]["actual_change"]))
        return loss
    monkeypatch.setattr(SOAP, "step", step)
    recs = train(cfg(rule="soap", lr=1.0, epochs=1), data=digits)
    assert math.isfinite(recs[-1]["train_loss"]) and recs[-1]["train_loss"] < evals(recs)[0][
        "train_loss"]
    assert seen and any(kind == "newton" for kind, _ in seen)
    assert all(actual is None for _, actual in seen)  # no loss pass after the step


def test_a_run_records_the_device_it_used_apart_from_the_build(digits):
    """A CPU run of a build with CUDA kernels says cpu, not "cuda"; the build is named apart
    (and so in a stacked run's record)."""
    from soap_cuda.experiments.batched import train_batched
    for first in (train(cfg(epochs=0.25), data=digits)[0],
                  train_batched([cfg(epochs=0.25)], [None], digits)[0][0]):
        assert first["device"] == "cpu" and "backend" not in first
        assert first["build"].startswith(("native", "pure-PyTorch"))


def test_epoch_order_is_the_argsort_of_the_seeded_philox_stream():
    """An epoch's order: a permutation, the stable argsort of the Philox stream's float64
    normals (the reference's bits), other for another epoch or seed."""
    from soap_cuda.experiments.train import _ORDER_STREAM, _epoch_order
    from soap_cuda.feedback import stream_seed
    from soap_cuda.reference.philox import philox_normal
    for n, seed, epoch in [(1, 0, 0), (97, 3, 0), (1000, 7, 5), (257, -2, 2)]:
        order = _epoch_order(seed, epoch, n, "cpu")
        keys = philox_normal(stream_seed(seed ^ _ORDER_STREAM), epoch, (n,))
        assert torch.equal(order, torch.argsort(keys, stable=True))
        assert torch.equal(order.sort().values, torch.arange(n))
    assert not torch.equal(_epoch_order(3, 0, 100, "cpu"), _epoch_order(3, 1, 100, "cpu"))
    assert not torch.equal(_epoch_order(3, 0, 100, "cpu"), _epoch_order(4, 0, 100, "cpu"))
    with pytest.raises(ValueError, match="unknown epoch order"):
        _epoch_order(3, 0, 10, "cpu", "shuffle")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_epoch_order_drawn_on_cuda_is_the_cpu_one():
    from soap_cuda.experiments.train import _epoch_order
    for n in (1, 1000, 60000):
        order = _epoch_order(11, 3, n, "cuda")
        assert order.is_cuda and torch.equal(order.cpu(), _epoch_order(11, 3, n, "cpu"))


def test_a_checkpoint_from_before_the_philox_order_resumes_on_its_own_order(
        digits, tmp_path, monkeypatch):
    """A checkpoint whose position names no order was made with the seeded CPU randperm: its run
    resumes on that order, exactly as the uninterrupted run under the old order."""
    from soap_cuda.experiments import train as train_module
    kw = dict(rule="sign", lr=0.02)
    monkeypatch.setattr(train_module, "EPOCH_ORDER", "randperm")
    full = train(cfg(epochs=2, **kw), data=digits)
    train(cfg(epochs=1, **kw), checkpoint_path=tmp_path / "old.pt", data=digits)
    monkeypatch.setattr(train_module, "EPOCH_ORDER", "philox")
    state = torch.load(tmp_path / "old.pt", weights_only=False)
    assert state["position"].pop("order") == "randperm"
    torch.save(state, tmp_path / "old.pt")
    resumed = train(cfg(epochs=2, **kw), checkpoint_path=tmp_path / "old.pt", resume=True,
                    data=digits)
    key = lambda rs: [(r["examples"], r["train_loss"]) for r in evals(rs)]
    assert key(resumed) == key(full)
    assert key(train(cfg(epochs=2, **kw), data=digits)) != key(full)  # philox: other batches


def test_pending_losses_wait_in_a_ring_read_in_step_order():
    from soap_cuda.experiments.train import PendingLosses
    pending = PendingLosses(capacity=3)
    rows = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, float("nan")]),
            torch.tensor([5.0, 6.0])]
    assert [pending.add(r, 4, 4 * (i + 1), i + 1) for i, r in enumerate(rows)] == \
        [False, False, True]
    ring = pending._ring
    with pytest.raises(RuntimeError, match="full"):
        pending.add(rows[0], 4, 16, 4)
    got = list(pending.read(alive=lambda k: k == 0))
    assert got == [(0, 1.0, 4, 4, 1), (0, 3.0, 4, 8, 2), (0, 5.0, 4, 12, 3)]
    pending.add(torch.tensor([7.0, 8.0], dtype=torch.float64), 2, 14, 4)  # converts
    assert pending._ring is ring  # allocated once
    with pytest.raises(ValueError, match="changed from 2 values to 3"):
        pending.add(torch.zeros(3), 2, 16, 5)
    assert [v for _, v, *_ in pending.read()] == [7.0, 8.0]
