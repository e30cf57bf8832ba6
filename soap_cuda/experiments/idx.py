"""Reader and writer for the IDX format of the MNIST and Fashion-MNIST files.

Layout (big-endian): two zero bytes, one type byte, one byte giving the number of dimensions,
then one uint32 per dimension, then the data in C order. Files may be gzip-compressed (`.gz`),
as torchvision and the original site ship them.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

# type byte -> big-endian numpy dtype
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").str: code for code, dt in _DTYPES.items()}
_CODES.update({dt.str: code for code, dt in _DTYPES.items()})


class IDXError(ValueError):
    """A file that is not a well-formed IDX file; the message names the file and the fault."""


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array.

    Raises FileNotFoundError when the file is missing and IDXError when its magic number,
    type code or size does not match the format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # e.g. a truncated gzip stream
        raise IDXError(f"{path}: cannot read ({e})") from e
    if len(raw) < 4:
        raise IDXError(f"{path}: truncated: {len(raw)} bytes, too short for an IDX header")
    zero, code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise IDXError(f"{path}: wrong magic number 0x{magic:08x}; not an IDX file "
                       f"(expected 0x0000TTNN with type TT in "
                       f"{{{', '.join(f'{c:02x}' for c in _DTYPES)}}})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header: {len(raw)} bytes, need {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise IDXError(f"{path}: truncated: shape {shape} needs {expected} data bytes, "
                       f"file has {got}")
    if got > expected:
        raise IDXError(f"{path}: {got - expected} unexpected trailing bytes after shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzip-compressed when the name ends in `.gz`."""
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str if array.dtype.byteorder != "|" else array.dtype.str
    if key not in _CODES:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    code = _CODES[key]
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX stores arrays of 1 to 255 dimensions")
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + body)
