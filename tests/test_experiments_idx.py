"""IDX reader/writer: round trips and the errors a corrupt or missing file must give."""
import gzip

import numpy as np
import pytest

from soap_cuda.experiments.data import DataError, load_dataset
from soap_cuda.experiments.idx import IDXError, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (7, 28, 28)), (np.uint8, (7,)),
                                         (np.int32, (3, 4)), (np.float32, (2, 3, 5)),
                                         (np.float64, (4,)), (np.int16, (2, 2)),
                                         (np.int8, (5,))])
def test_round_trip(tmp_path, suffix, dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_header_bytes_match_mnist_layout(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 1])  # MNIST labels magic 2049
    assert int.from_bytes(raw[4:8], "big") == 10 and raw[8:] == bytes(range(10))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_idx(tmp_path / "nope")


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(IDXError, match="wrong magic number 0x12340801"):
        read_idx(path)


def test_unknown_type_code(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(IDXError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("cut", [2, 6, 20])
def test_truncated(tmp_path, cut):
    path = tmp_path / "img"
    write_idx(path, np.zeros((2, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-cut] if cut != 2 else path.read_bytes()[:2])
    with pytest.raises(IDXError, match="truncated"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "img"
    write_idx(path, np.zeros((2, 2), np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(IDXError, match="trailing"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "img.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(IDXError):
        read_idx(path)


def _write_mnist(root, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(1)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{sfx}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{sfx}",
                  rng.integers(0, 10, n, dtype=np.uint8))
    return raw


def test_load_mnist_from_torchvision_layout(tmp_path):
    _write_mnist(tmp_path)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (30, 784) and ds.x_test.shape == (10, 784)
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-2
    assert ds.y_train.dtype.is_floating_point is False


def test_load_mnist_mismatched_counts(tmp_path):
    raw = _write_mnist(tmp_path, gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        load_dataset("mnist", tmp_path)


def test_load_mnist_missing_dir_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("fashion-mnist", tmp_path)


def test_corrupt_file_surfaces_through_loader(tmp_path):
    raw = _write_mnist(tmp_path, gz=False)
    with gzip.open(raw / "ignored.gz", "wb"):
        pass
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(IDXError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)
