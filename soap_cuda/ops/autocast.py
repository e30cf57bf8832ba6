"""Autocast kernels for the fallback (the native library registers them in C++:
csrc/autocast/): under torch.autocast, fa_linear and fa_conv cast their floating operands to
the autocast dtype (float64 ones stay), as ATen's linear and conv do, then run below autocast.
No cache of B's cast here: the fallback is for correctness, and a fresh cast gives the same
bits."""
import torch

from .. import _library

_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def cast(value, device_type, dtype):
    """`value` in `dtype` if autocast casts it (ATen's rule: a floating tensor on the autocast
    device, not float64), else as it is (None and non-tensors too)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() \
            and value.dtype != torch.float64 and value.device.type == device_type:
        return value.to(dtype)
    return value


def register(name: str) -> None:
    op = _library.op(name)
    for device_type, key in _KEYS.items():
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args, device_type=device_type, excluded=excluded):
            dtype = torch.get_autocast_dtype(device_type)
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*(cast(a, device_type, dtype) for a in args))

        _library._impl_lib.impl(name, kernel, key)
