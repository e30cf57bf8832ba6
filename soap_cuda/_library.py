"""Loads the native library or stands in for it, so `torch.ops.soap_cuda.*` always exist.

The schemas live once, in `schemas.def`. The native library defines them (TORCH_LIBRARY) and
registers its CPU/CUDA kernels; without it, this module defines the same schemas from the same
file. Either way each op's pure-PyTorch reference is registered as its default kernel
(CompositeExplicitAutograd), so devices without a native kernel, and the fallback, run it.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

NAMESPACE = "soap_cuda"
SCHEMA_FILE = Path(__file__).with_name("schemas.def")
_SCHEMA_LINE = re.compile(r'^SOAP_CUDA_SCHEMA\("(?P<schema>[^"]+)"\)\s*$')

_BACKEND_VALUES = ("auto", "native", "python")


def read_schemas() -> dict[str, str]:
    """op name -> schema string, in file order."""
    schemas = {}
    for line in SCHEMA_FILE.read_text().splitlines():
        match = _SCHEMA_LINE.match(line.strip())
        if match:
            schema = match.group("schema")
            schemas[schema.split("(", 1)[0]] = schema
    return schemas


def _requested_backend() -> str:
    value = os.environ.get("SOAP_CUDA_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKEND_VALUES:
        raise ValueError(f"SOAP_CUDA_BACKEND must be one of {_BACKEND_VALUES}, got {value!r}")
    return value


def _load_native():
    """Import the compiled module, or return (None, reason)."""
    requested = _requested_backend()
    if requested == "python":
        return None, "SOAP_CUDA_BACKEND=python"
    try:
        from soap_cuda import _C  # noqa: F401  (registers the ops as a side effect)
    except (ImportError, OSError) as exc:
        if requested == "native":
            raise ImportError(f"SOAP_CUDA_BACKEND=native but the soap_cuda native library "
                              f"could not be loaded: {exc}") from exc
        warnings.warn(f"soap_cuda: the native library could not be loaded ({exc}); using the "
                      "pure-Python fallback. Reinstall with `pip install --no-build-isolation "
                      "-e .` to build it.", RuntimeWarning, stacklevel=3)
        return None, str(exc)
    return _C, None


_native, fallback_reason = _load_native()
_def_lib = None
if _native is None:
    _def_lib = torch.library.Library(NAMESPACE, "DEF")
    for _schema in read_schemas().values():
        _def_lib.define(_schema, tags=(torch.Tag.pt2_compliant_tag,))

_impl_lib = torch.library.Library(NAMESPACE, "IMPL")


def backend() -> str:
    """"cuda" (native, with CUDA kernels), "cpu" (native, CPU kernels only) or "python"."""
    if _native is None:
        return "python"
    return "cuda" if getattr(_native, "WITH_CUDA", 0) else "cpu"


def register_default(name: str, fn) -> None:
    """Register `fn` (pure PyTorch) as the op's kernel wherever no native kernel is registered."""
    _impl_lib.impl(name, fn, "CompositeExplicitAutograd")


def op(name: str):
    return getattr(getattr(torch.ops, NAMESPACE), name).default
