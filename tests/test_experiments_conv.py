"""Experiments with the conv models: LeNet-5 and ResNet-20 runs, image data (zero padding to
32x32, CIFAR-10 batches in both formats), the step learning-rate schedule, exact resume."""
import pickle

import numpy as np
import pytest
import torch

from soap_cuda.experiments.config import TrainConfig
from soap_cuda.experiments.data import DataError, load_dataset
from soap_cuda.experiments.optimizers import ConfigError
from soap_cuda.experiments.train import train


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def mnist32():
    return load_dataset("mnist5k", train_examples=96, test_examples=32, pad_to=32)


def _cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def write_cifar(root, fmt, n_train=(20, 12), n_test=10):
    """CIFAR-10's own file layouts, small: python pickles or 3073-byte binary records."""
    d = root / ("cifar-10-batches-py" if fmt == "python" else "cifar-10-batches-bin")
    d.mkdir(parents=True)
    names = [f"data_batch_{i + 1}" for i in range(len(n_train))] + ["test_batch"]
    arrays = [_cifar_arrays(n, i) for i, n in enumerate([*n_train, n_test])]
    for name, (x, y) in zip(names, arrays):
        if fmt == "python":
            with open(d / name, "wb") as f:
                pickle.dump({b"data": x, b"labels": [int(v) for v in y]}, f)
        else:
            np.concatenate([y[:, None].astype(np.uint8), x], axis=1).tofile(d / f"{name}.bin")
    return arrays


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar10_loads_both_formats(tmp_path, fmt):
    arrays = write_cifar(tmp_path, fmt)
    data = load_dataset("cifar10", tmp_path)
    assert data.image_shape == (3, 32, 32) and data.x_train.shape == (32, 3072)
    assert torch.equal(data.y_train, torch.as_tensor(np.concatenate([arrays[0][1],
                                                                     arrays[1][1]])))
    assert torch.equal(data.y_test, torch.as_tensor(arrays[2][1]))
    # per-channel standardisation with the training set's statistics
    x = data.x_train.view(-1, 3, 32 * 32)
    torch.testing.assert_close(x.mean((0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # the pixels themselves, in (channel, row, column) order
    raw = np.concatenate([arrays[0][0], arrays[1][0]]).astype(np.float64) / 255.0
    raw = raw.reshape(-1, 3, 1024)
    want = (raw - raw.mean((0, 2), keepdims=True)) / raw.std((0, 2), keepdims=True)
    torch.testing.assert_close(x.double(), torch.as_tensor(want), atol=1e-5, rtol=0)


def test_cifar10_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match="cannot find data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_padding_to_32_adds_black_borders(mnist32):
    plain = load_dataset("mnist5k", train_examples=96, test_examples=32)
    assert plain.image_shape == (1, 28, 28) and mnist32.image_shape == (1, 32, 32)
    images = mnist32.x_train.view(-1, 32, 32)
    border = torch.cat([images[:, :2].flatten(), images[:, -2:].flatten(),
                        images[:, :, :2].flatten(), images[:, :, -2:].flatten()])
    assert torch.all(border == border[0])  # black: the standardised value of a zero pixel
    assert border[0] < images.mean()


def cfg(**kw):
    base = dict(model="lenet", dataset="mnist5k", train_examples=96, test_examples=32,
                epochs=1, batch_size=16, eval_every=48, probe_examples=32, sync_every=32,
                lr=0.05, momentum=0.9, weight_decay=1e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("rule", ["bp", "fa", "sign", "rescaled_sign"])
def test_lenet_runs_every_rule_with_conv_layer_metrics(mnist32, rule):
    records = train(cfg(rule=rule), data=mnist32)
    final = records[-1]
    assert final["kind"] == "final" and not final["diverged"]
    layers = [r for r in records if r["kind"] == "eval"][-1]["layers"]
    assert set(layers) == {"net.0", "net.3", "net.6", "net.9", "net.11"}  # 3 conv + 2 linear
    for m in layers.values():
        assert "bw_angle_deg" in m and "err_norm_ratio" in m
    if rule == "bp":
        assert all(m["bw_angle_deg"] < 1e-3 for m in layers.values())


def test_gain_matched_scales_apply_to_conv_layers(mnist32):
    scales = {"net.0": 3.0, "net.3": 2.0, "net.6": 1.5, "net.9": 1.0, "net.11": 1.0}
    records = train(cfg(rule="bp", layer_lr_scale=scales, epochs=0.25), data=mnist32)
    assert records[-1]["kind"] == "final"


def test_resnet20_trains_on_cifar10_batches(tmp_path):
    write_cifar(tmp_path, "binary", n_train=(16, 16), n_test=8)
    data = load_dataset("cifar10", tmp_path)
    records = train(TrainConfig(model="resnet20", dataset="cifar10", rule="sign", epochs=1,
                                batch_size=16, eval_every=32, probe_examples=16,
                                sync_every=16, lr=0.05), data=data)
    layers = [r for r in records if r["kind"] == "eval"][-1]["layers"]
    assert len(layers) == 20  # 19 convs + the classifier
    assert records[-1]["kind"] == "final"


def test_lr_drops_follow_the_fraction_of_training(mnist32, tmp_path):
    ckpt = tmp_path / "c.pt"
    train(cfg(rule="fa", lr_drops=[0.25, 0.5]), checkpoint_path=ckpt, data=mnist32)
    state = torch.load(ckpt, weights_only=False)
    # 96 examples, batches of 16: the last batch starts at 80 >= 0.5 * 96, so two drops
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.01)
    plain = train(cfg(rule="fa"), data=mnist32)
    dropped = train(cfg(rule="fa", lr_drops=[0.25, 0.5]), data=mnist32)
    assert plain[-1]["train_loss"] != dropped[-1]["train_loss"]


def test_conv_resume_is_exact(mnist32, tmp_path):
    kw = dict(rule="random_sign")
    full = train(cfg(epochs=2, **kw), checkpoint_path=tmp_path / "full.pt", data=mnist32)
    train(cfg(epochs=1, **kw), checkpoint_path=tmp_path / "part.pt", data=mnist32)
    resumed = train(cfg(epochs=2, **kw), checkpoint_path=tmp_path / "part.pt", resume=True,
                    data=mnist32)
    key = lambda rs: [(r["examples"], r["train_loss"], r["test_loss"]) for r in rs  # noqa: E731
                      if r["kind"] == "eval"]
    assert key(resumed) == key(full)


def test_conv_config_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        TrainConfig(model="vgg")
    with pytest.raises(ConfigError, match="fractions of training"):
        TrainConfig(lr_drops=[1.5])
    digits = load_dataset("digits", train_examples=32, test_examples=16, pad_to=None)
    with pytest.raises(ConfigError, match="needs 32x32 images"):
        train(TrainConfig(model="lenet", dataset="digits", epochs=0.1), data=digits)


def test_cli_trains_lenet(tmp_path, capsys):
    from soap_cuda.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--rule", "rescaled_sign", "--epochs", "0.02",
                 "--batch-size", "32", "--lr-drops", "0.5", "--momentum", "0.9",
                 "--out", str(out), "--no-progress"]) == 0
    assert (out / "metrics.jsonl").is_file()
    assert capsys.readouterr().out.startswith("rescaled_sign lr 0.01 seed 0: train loss")
