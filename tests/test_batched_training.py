"""A sweep's runs trained as one stacked model: each model reproduces its own sequential run
(float64: curves equal to 1e-9 relative), one model diverging leaves the others untouched."""
import json
import math

import pytest
import torch
from conftest import requires_cuda

from soap_cuda.experiments.batched import batchable, group_key, train_batched
from soap_cuda.experiments.config import TrainConfig
from soap_cuda.experiments.data import Dataset, load_dataset
from soap_cuda.experiments.train import train

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BASE = dict(dataset="digits", hidden=[16, 12], epochs=1.5, batch_size=16, eval_every=64,
            probe_examples=48, sync_every=48, eval_examples=100, align_every=2)


@pytest.fixture(scope="module")
def digits64():
    d = load_dataset("digits", train_examples=256, test_examples=64)
    return Dataset(d.name, d.description, d.x_train.double(), d.y_train, d.x_test.double(),
                   d.y_test, d.num_classes, d.image_shape)


def _cfg(**kw):
    return TrainConfig(**{**BASE, **kw})


def _close(a, b, rel=1e-9):
    if a is None or b is None:
        return a is b
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def _same_run(batched, sequential):
    assert [r["kind"] for r in batched] == [r["kind"] for r in sequential]
    assert batched[0]["config"] == sequential[0]["config"]
    for b, s in zip(batched[1:], sequential[1:]):
        assert b["examples"] == s["examples"]
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "batch_loss"):
            if key in s:
                assert _close(b.get(key), s.get(key)), (key, b.get(key), s.get(key), b)
        assert b.get("diverged") == s.get("diverged")
        if s["kind"] == "eval":
            assert b.get("eval_examples") == s.get("eval_examples")
            assert set(b["layers"]) == set(s["layers"])
            for layer, metrics in s["layers"].items():
                assert set(b["layers"][layer]) == set(metrics)
                for key, value in metrics.items():
                    got = b["layers"][layer][key]
                    # acos near 0 turns rounding of the cosine into ~1e-6 degrees
                    tol = 1e-4 if key.endswith("angle_deg") else 1e-6 * max(1.0, abs(value))
                    assert (math.isnan(got) and math.isnan(value)) or \
                        abs(got - value) <= tol, (layer, key, got, value)


SGD_RUNS = [dict(rule="bp", lr=0.1, seed=0, momentum=0.9, weight_decay=1e-3),
            dict(rule="fa", lr=0.2, seed=1),
            dict(rule="sign", lr=0.05, seed=2, momentum=0.5),
            dict(rule="rescaled_sign", lr=0.1, seed=3, weight_decay=1e-2),
            dict(rule="scaled_sign", lr=0.1, seed=4),
            dict(rule="random_sign", lr=0.1, seed=5),
            dict(rule="bp", lr=0.1, seed=6, label="bp_gain_matched_sign",
                 layer_lr_scale={"fc1": 2.0, "fc2": 0.5, "fc3": 1.0}),
            dict(rule="kolen_pollack", lr=0.1, seed=7, momentum=0.9, weight_decay=1e-2)]
DFA_RUNS = [dict(rule="dfa", lr=0.1, seed=0), dict(rule="dfa", lr=0.3, seed=1, momentum=0.9)]
ADAM_RUNS = [dict(rule="bp", lr=1e-3, seed=0, optimizer="adam"),
             dict(rule="sign", lr=3e-3, seed=1, optimizer="adam", weight_decay=1e-2),
             dict(rule="kolen_pollack", lr=1e-3, seed=2, optimizer="adam")]


SOAP_RUNS = [dict(rule="soap", lr=1.0, seed=0), dict(rule="soap", lr=0.5, seed=1),
             dict(rule="soap", lr=2.0, seed=2)]
# one stack, each model with its own optimizer: SGD (with and without momentum) beside Adam
MIXED_RUNS = SGD_RUNS[:3] + ADAM_RUNS
DFA_MIXED_RUNS = DFA_RUNS + [dict(rule="dfa", lr=1e-3, seed=2, optimizer="adam")]


@pytest.mark.parametrize("runs", [SGD_RUNS, DFA_RUNS, ADAM_RUNS, SOAP_RUNS, MIXED_RUNS,
                                  DFA_MIXED_RUNS],
                         ids=["sgd", "dfa", "adam", "soap", "sgd-and-adam", "dfa-sgd-and-adam"])
def test_each_model_reproduces_its_sequential_run(float64, digits64, runs):
    cfgs = [_cfg(**r) for r in runs]
    if runs is SOAP_RUNS:  # and a learning-rate drop, which SOAP's step length follows
        cfgs = [_cfg(lr_drops=[0.5], **r) for r in runs]
    assert all(batchable(c) for c in cfgs) and len({group_key(c) for c in cfgs}) == 1
    batched = train_batched(cfgs, [None] * len(cfgs), digits64)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=digits64))


@pytest.mark.parametrize("runs", [SGD_RUNS, DFA_MIXED_RUNS, MIXED_RUNS],
                         ids=["sgd", "dfa-sgd-and-adam", "sgd-and-adam"])
def test_graphed_steps_reproduce_the_sequential_runs(float64, digits64, runs):
    """train_batched(graphed=True): every step through soap_cuda.graphed_step (the stack's
    schedules on the device; a CUDA graph on CUDA), a learning-rate drop, the epochs' partial
    last batch eager: each model still reproduces its own run."""
    # batches of 20: each epoch ends in one of 16, and syncs (every 48) fall inside batches
    cfgs = [_cfg(lr_drops=[0.5], batch_size=20, **r) for r in runs]
    batched = train_batched(cfgs, [None] * len(cfgs), digits64, graphed=True)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=digits64))


def test_a_diverging_model_does_not_disturb_the_others(float64, digits64, tmp_path):
    runs = [dict(rule="fa", lr=0.1, seed=0), dict(rule="sign", lr=400.0, seed=1),
            dict(rule="bp", lr=0.05, seed=2)]
    cfgs = [_cfg(**r) for r in runs]
    paths = [tmp_path / f"{i}.jsonl" for i in range(3)]
    batched = train_batched(cfgs, paths, digits64)
    assert batched[1][-1]["diverged"] and not batched[0][-1]["diverged"]
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=digits64))
    from soap_cuda.experiments.train import read_records
    assert [r["kind"] for r in read_records(paths[1])] == [r["kind"] for r in batched[1]]


def test_what_is_batchable():
    assert batchable(_cfg(rule="sign"))
    assert batchable(_cfg(rule="kolen_pollack")) and batchable(_cfg(rule="dfa"))
    assert group_key(_cfg(rule="dfa")) != group_key(_cfg(rule="fa"))  # B of another shape
    assert batchable(_cfg(rule="soap")) and group_key(_cfg(rule="soap")) != group_key(
        _cfg(rule="fa"))  # a step of its own
    assert not batchable(_cfg(rule="soap", layer_lr_scale={"fc1": 2.0}))
    assert batchable(_cfg(rule="fa", model="lenet"))
    assert batchable(_cfg(rule="kolen_pollack", model="resnet20"))
    assert batchable(_cfg(rule="dfa", model="lenet"))
    assert batchable(_cfg(rule="soap", model="lenet"))
    assert group_key(_cfg(rule="fa", model="lenet")) != group_key(_cfg(rule="fa"))
    assert group_key(_cfg(rule="fa", lr=0.1, seed=3)) == group_key(_cfg(rule="bp", lr=1.0))
    assert group_key(_cfg(rule="fa")) != group_key(_cfg(rule="fa", hidden=[8]))
    # SGD and Adam models share a stack (a DFA arm and its Adam arm too)
    assert group_key(_cfg(rule="fa")) == group_key(_cfg(rule="fa", optimizer="adam"))
    assert group_key(_cfg(rule="dfa")) == group_key(_cfg(rule="dfa", optimizer="adam"))
    with pytest.raises(ValueError, match="share one group_key"):
        train_batched([_cfg(rule="fa"), _cfg(rule="fa", hidden=[8])], [None, None], None)


def test_a_model_whose_loss_turns_nan_between_evaluations_stops_where_train_stops(
        float64, digits64):
    """Step losses are read at evaluations only: a loss that stops being finite at step 2 is
    still recorded at step 2, as the sequential run records it."""
    runs = [dict(rule="fa", lr=0.1, seed=0), dict(rule="bp", lr=1e250, seed=1)]
    cfgs = [_cfg(activation="relu", **r) for r in runs]
    batched = train_batched(cfgs, [None, None], digits64)
    assert [r["examples"] for r in batched[1][-2:]] == [32, 32]  # between evals (every 64)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=digits64))


def test_schedules_match_the_sequential_runs(float64, digits64):
    """A learning-rate drop and a sync at the first batch, as train() applies them."""
    cfgs = [_cfg(lr_drops=[0.5], sync_at_start=True, **r) for r in
            (dict(rule="sign", lr=0.1, seed=0, momentum=0.9), dict(rule="fa", lr=0.2, seed=1),
             dict(rule="random_sign", lr=0.1, seed=2))]
    batched = train_batched(cfgs, [None] * 3, digits64)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=digits64))


@pytest.fixture(scope="module")
def mnist32_64():
    d = load_dataset("mnist5k", train_examples=64, test_examples=24, pad_to=32)
    return Dataset(d.name, d.description, d.x_train.double(), d.y_train, d.x_test.double(),
                   d.y_test, d.num_classes, d.image_shape)


# ResNet-20 in float64 runs on ATen's slow convolutions: half the run, smaller evaluations
RESNET_SHORT = dict(epochs=0.5, eval_every=16, eval_examples=8, probe_examples=8)
CONV_BASE = dict(dataset="mnist5k", epochs=1, batch_size=16, eval_every=32,
                 probe_examples=16, sync_every=32, eval_examples=20, align_every=2)
LENET_RUNS = [dict(rule="bp", lr=0.1, seed=0, momentum=0.9, weight_decay=1e-3),
              dict(rule="fa", lr=0.2, seed=1),
              dict(rule="sign", lr=0.05, seed=2, momentum=0.5),
              dict(rule="rescaled_sign", lr=0.1, seed=3),
              dict(rule="random_sign", lr=0.1, seed=4),
              dict(rule="bp", lr=0.1, seed=5, label="bp_gain_matched_sign",
                   layer_lr_scale={"net.0": 2.0, "net.3": 0.5, "net.6": 1.0, "net.9": 1.5,
                                   "net.11": 1.0}),
              dict(rule="kolen_pollack", lr=0.1, seed=6, momentum=0.9, weight_decay=1e-2)]
RESNET_RUNS = [dict(rule="bp", lr=0.05, seed=0, momentum=0.9, weight_decay=1e-3),
               dict(rule="fa", lr=0.05, seed=1),
               dict(rule="kolen_pollack", lr=0.05, seed=2, weight_decay=1e-2)]


CONV_DFA_RUNS = [dict(rule="dfa", lr=0.1, seed=0), dict(rule="dfa", lr=0.05, seed=1, momentum=0.9)]
CONV_SOAP_RUNS = [dict(rule="soap", lr=0.2, seed=0), dict(rule="soap", lr=0.1, seed=1)]


@pytest.mark.parametrize("model,runs,optimizer", [
    ("lenet", LENET_RUNS, "sgd"), ("lenet", LENET_RUNS[1:4], "adam"),
    ("resnet20", RESNET_RUNS, "sgd"), ("lenet", CONV_DFA_RUNS, "sgd"),
    ("resnet20", CONV_DFA_RUNS, "sgd"), ("lenet", CONV_SOAP_RUNS, "sgd"),
    ("resnet20", CONV_SOAP_RUNS, "sgd")],
    ids=["lenet-sgd", "lenet-adam", "resnet20-sgd", "lenet-dfa", "resnet20-dfa", "lenet-soap",
         "resnet20-soap"])
def test_each_conv_model_reproduces_its_sequential_run(float64, mnist32_64, model, runs,
                                                       optimizer):
    """Grouped convolutions, per-model batch norm statistics, option-A shortcuts and the
    flatten into the stacked linear layers: each model's curves and alignment equal its own
    run's."""
    if optimizer == "adam":
        runs = [{**r, "lr": r["lr"] / 100, "momentum": 0.0} for r in runs]
    short = RESNET_SHORT if model == "resnet20" else {}
    cfgs = [TrainConfig(**{**CONV_BASE, **short, **r, "model": model, "optimizer": optimizer})
            for r in runs]
    assert all(batchable(c) for c in cfgs) and len({group_key(c) for c in cfgs}) == 1
    batched = train_batched(cfgs, [None] * len(cfgs), mnist32_64)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=mnist32_64))


@requires_cuda
@pytest.mark.parametrize("model,runs", [
    ("mlp", SGD_RUNS[:3] + SGD_RUNS[-1:]), ("mlp", DFA_RUNS), ("mlp", SOAP_RUNS[:2]),
    ("lenet", LENET_RUNS[:3] + LENET_RUNS[-1:]), ("lenet", CONV_DFA_RUNS),
    ("resnet20", RESNET_RUNS)], ids=["mlp", "mlp-dfa", "mlp-soap", "lenet", "lenet-dfa",
                                     "resnet20"])
def test_stacked_models_reproduce_their_runs_on_cuda(float64, model, runs):
    """The same equality on a GPU: batched cuBLAS products, grouped cuDNN convolutions and the
    stacked optimizer against each model's own run there."""
    conv = model != "mlp"
    d = load_dataset("mnist5k" if conv else "digits", train_examples=64 if conv else 256,
                     test_examples=24 if conv else 64, pad_to=32 if conv else None)
    data = Dataset(d.name, d.description, d.x_train.double().cuda(), d.y_train.cuda(),
                   d.x_test.double().cuda(), d.y_test.cuda(), d.num_classes, d.image_shape)
    base = {**(CONV_BASE if conv else BASE), "model": model, "device": "cuda"}
    if conv:
        base.pop("hidden", None)
    cfgs = [TrainConfig(**{**base, **r}) for r in runs]
    batched = train_batched(cfgs, [None] * len(cfgs), data)
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=data))


def test_a_diverging_conv_model_does_not_disturb_the_others(float64, mnist32_64):
    """Grouped convolutions and per-channel batch norm keep one model's NaNs in its own
    channels: the others' runs are their sequential runs."""
    runs = [dict(rule="fa", lr=0.05, seed=0), dict(rule="sign", lr=1e6, seed=1),
            dict(rule="bp", lr=0.05, seed=2)]
    cfgs = [TrainConfig(**{**CONV_BASE, **RESNET_SHORT, **r, "model": "resnet20"})
            for r in runs]
    batched = train_batched(cfgs, [None] * 3, mnist32_64)
    assert batched[1][-1]["diverged"] and not batched[0][-1]["diverged"]
    for cfg, recs in zip(cfgs, batched):
        _same_run(recs, train(cfg, data=mnist32_64))


def test_the_alignment_probe_in_passes_measures_what_one_pass_does(float64, mnist32_64):
    """A stack of large models measures alignment a few probe examples at a time (evaluation
    mode: each example's error signal is its own); the angles and norm ratios are the same."""
    from soap_cuda.experiments.batched import build_stack
    from soap_cuda.stacked import alignment

    cfgs = [TrainConfig(**{**CONV_BASE, **r, "model": "lenet"}) for r in LENET_RUNS[:4]]
    net = build_stack(cfgs, mnist32_64)
    net.train(False)
    probe = (mnist32_64.x_train[:10], mnist32_64.y_train[:10])
    whole = alignment(net, *probe, chunk=10)
    parts = alignment(net, *probe, chunk=3)  # passes of 3, 3, 3 and 1 examples
    for one, split in zip(whole, parts):
        for layer, metrics in one.items():
            for key, value in metrics.items():
                got = split[layer][key]
                tol = 1e-4 if key.endswith("angle_deg") else 1e-9 * max(1.0, abs(value))
                assert (math.isnan(got) and math.isnan(value)) or abs(got - value) <= tol, \
                    (layer, key, got, value)
    assert any(0.1 < m["net.0"]["err_angle_deg"] for m in whole)  # FA models: not backprop


CONV_STOP = dict(epochs=0.75, eval_every=16)  # 3 steps, an evaluation (and checkpoint) after each


@pytest.mark.parametrize("model,runs,stop,resumed_from", [
    ("mlp", MIXED_RUNS, 14, 12), ("mlp", DFA_MIXED_RUNS, 14, 12),
    ("resnet20", RESNET_RUNS[:1], 2, 1)], ids=["mixed", "dfa", "resnet20"])
def test_a_stacked_group_stopped_mid_way_resumes_exactly(request, float64, tmp_path, model, runs,
                                                         stop, resumed_from):
    """Stopped (as by Ctrl-C) after a few checkpoints, a stack resumes from the last: every
    model's records and file equal those of the uninterrupted stack, bit for bit (ResNet-20, a
    stack of one for time: its batch-norm statistics and momentum buffers included)."""
    if model == "mlp":
        data, cfgs = request.getfixturevalue("digits64"), [_cfg(**r) for r in runs]
    else:
        data = request.getfixturevalue("mnist32_64")
        cfgs = [TrainConfig(**{**CONV_BASE, **RESNET_SHORT, **CONV_STOP, **r, "model": model})
                for r in runs]
    whole = train_batched(cfgs, [tmp_path / f"w{i}.jsonl" for i in range(len(cfgs))], data)
    paths = [tmp_path / f"r{i}.jsonl" for i in range(len(cfgs))]
    ckpt = tmp_path / "stack.pt"

    class Stop(Exception):
        pass

    def stop_at(step):
        count = [0]

        def on_step(examples):
            count[0] += 1
            if count[0] == step:
                raise Stop
        return on_step, count
    on_step, _ = stop_at(stop)  # MLP: evaluations every 4 steps, checkpoints at 4, 8 and 12
    with pytest.raises(Stop):
        train_batched(cfgs, paths, data, on_step=on_step, checkpoint_path=ckpt,
                      checkpoint_every_evals=1)
    assert ckpt.is_file()
    on_step, count = stop_at(-1)
    resumed = train_batched(cfgs, paths, data, on_step=on_step, checkpoint_path=ckpt,
                            checkpoint_every_evals=1)
    assert count[0] == whole[0][-2]["step"] - resumed_from  # it went on from its checkpoint
    def strip(recs):  # as text: NaN angles (DFA's B-W) compare equal
        return json.dumps([{k: v for k, v in r.items() if k != "wall_s"} for r in recs])
    from soap_cuda.experiments.train import read_records
    for k in range(len(cfgs)):
        assert strip(resumed[k]) == strip(whole[k])
        assert strip(read_records(paths[k])) == strip(read_records(tmp_path / f"w{k}.jsonl"))
