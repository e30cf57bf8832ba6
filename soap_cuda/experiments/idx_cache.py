"""Decoded IDX arrays cached as .npy files, so a sweep's processes decode each data set once.

Decoding Fashion-MNIST's gzip files takes about 0.3 s on this project's CPU; every process of a
sweep, and every `soap-cuda train`, would pay it again. The cache folder is $SOAP_CUDA_CACHE,
else $XDG_CACHE_HOME/soap_cuda, else ~/.cache/soap_cuda. An entry is keyed by its source file's
resolved path, size and modification time, so a replaced file gets a new entry. Each entry
carries a CRC-32 of its data in a JSON sidecar: an entry that cannot be read back whole and
equal to what was written (truncated, corrupted, edited) is decoded again and rewritten, never
trusted. A cache folder that cannot be written costs only the decoding.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np

from .idx import read_idx

CACHE_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get("SOAP_CUDA_CACHE"):
        return Path(os.environ["SOAP_CUDA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "soap_cuda"


def _entry(path: Path) -> Path:
    st = path.stat()
    key = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{path.name.removesuffix('.gz')}-{digest}.npy"


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _load(entry: Path) -> np.ndarray | None:
    """The cached array, or None when the entry is missing or does not check out."""
    side = entry.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        array = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (list(array.shape) != meta.get("shape") or array.dtype.str != meta.get("dtype")
            or _crc(array) != meta.get("crc32")):
        return None
    return array


def _store(entry: Path, array: np.ndarray) -> None:
    """Write atomically (data, then its sidecar); give up quietly where the folder is
    read-only."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, entry)
        meta = {"shape": list(array.shape), "dtype": array.dtype.str, "crc32": _crc(array)}
        tmp_side = tmp.with_suffix(".json.tmp")
        tmp_side.write_text(json.dumps(meta))
        os.replace(tmp_side, entry.with_suffix(".json"))
    except OSError:
        pass


def read_idx_cached(path: str | os.PathLike) -> np.ndarray:
    """read_idx(path), from the cache when an entry for this very file checks out."""
    path = Path(path)
    if not path.is_file():
        return read_idx(path)  # its FileNotFoundError
    entry = _entry(path)
    array = _load(entry)
    if array is None:
        array = read_idx(path)
        _store(entry, array)
    return array
