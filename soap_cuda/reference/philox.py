"""Pure-PyTorch Philox4x32-10 Gaussian noise, bit-identical to csrc/common/philox.h.

Every step mirrors the C++ header, operation by operation: the 32-bit words in int64 torch ops,
the float64 part in numpy, whose elementwise +, -, *, /, sqrt are correctly rounded (torch's CPU
float64 sqrt is not: it is off by one ulp for about 0.7% of inputs), one op at a time so
nothing is fused.
Used by the default kernel of `philox_normal_fill` (the Python fallback) and by every reference
that needs the noise the native kernels regenerate.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

OP = "soap_cuda::philox_normal_fill"
_MASK32 = 0xFFFFFFFF
_MUL0, _MUL1 = 0xD2511F53, 0xCD9E8D57
_WEYL0, _WEYL1 = 0x9E3779B9, 0xBB67AE85
_TWO_POW_53_INV = 1.0 / 9007199254740992.0

_LOG_COEFFS = (0.043478260869565216, 0.047619047619047616, 0.05263157894736842,
               0.058823529411764705, 0.06666666666666667, 0.07692307692307693,
               0.09090909090909091, 0.1111111111111111, 0.14285714285714285, 0.2,
               0.3333333333333333)
_SIN_COEFFS = (2.8114572543455206e-15, -7.647163731819816e-13, 1.6059043836821613e-10,
               -2.505210838544172e-08, 2.7557319223985893e-06, -0.0001984126984126984,
               0.008333333333333333, -0.16666666666666666, 1.0)
_COS_COEFFS = (-1.5619206968586225e-16, 4.779477332387385e-14, -1.1470745597729725e-11,
               2.08767569878681e-09, -2.755731922398589e-07, 2.48015873015873e-05,
               -0.001388888888888889, 0.041666666666666664, -0.5)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of a * b for a 32-bit constant a and int64 tensor b < 2^32, in
    16-bit halves so that no int64 product overflows."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    low = b * a_lo                  # < 2^48
    high = b * a_hi                 # < 2^48; the product is high * 2^16 + low
    mid = low + ((high & 0xFFFF) << 16)
    lo = mid & _MASK32
    hi = (high >> 16) + (mid >> 32)
    return hi, lo


def philox4x32_10(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int]):
    """Philox4x32-10 on int64 tensors holding 32-bit words; returns the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_ > 0:
            k0, k1 = (k0 + _WEYL0) & _MASK32, (k1 + _WEYL1) & _MASK32
        hi0, lo0 = _mulhilo(_MUL0, c0)
        hi1, lo1 = _mulhilo(_MUL1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _horner(coeffs, x2: np.ndarray) -> np.ndarray:
    p = np.full_like(x2, coeffs[0])
    for c in coeffs[1:]:
        p = p * x2
        p = p + c
    return p


def log_basic(u: np.ndarray) -> np.ndarray:
    """log(u), u in (0, 1] float64, as philox.h computes it."""
    mant, exponent = np.frexp(u)
    m = mant * 2.0
    e = (exponent - 1).astype(np.float64)
    big = m > 1.4142135623730951
    m = np.where(big, m * 0.5, m)
    e = np.where(big, e + 1.0, e)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = _horner(_LOG_COEFFS, s2) * s2
    two_s = s * 2.0
    log_m = two_s + two_s * p
    return e * _LN2_HI + (e * _LN2_LO + log_m)


def sin_basic(x: np.ndarray) -> np.ndarray:
    return x * _horner(_SIN_COEFFS, x * x)


def cos_basic(x: np.ndarray) -> np.ndarray:
    p = _horner(_COS_COEFFS, x * x)
    return p * (x * x) + 1.0


def _check_seed(name: str, value: int) -> int:
    if not -(1 << 63) <= int(value) < (1 << 64):
        raise RuntimeError(f"{OP}: argument '{name}' must fit in 64 bits, got {value}")
    return int(value) & ((1 << 64) - 1)


def normal_flat(seed: int, offset: int, start: int, count: int,
                device: torch.device | str = "cpu") -> Tensor:
    """Noise elements start .. start+count-1 of stream (seed, offset), float64."""
    seed, offset = _check_seed("seed", seed), _check_seed("offset", offset)
    index = torch.arange(start, start + count, dtype=torch.int64, device=device)
    pair = index >> 1
    zeros = torch.zeros_like(pair)
    counter = (pair & _MASK32, pair >> 32, zeros + (offset & _MASK32), zeros + (offset >> 32))
    x0, x1, x2, x3 = philox4x32_10(counter, (seed & _MASK32, seed >> 32))
    n1 = (((x0 >> 5) << 26 | (x1 >> 6)) + 1).cpu().numpy()
    n2 = ((x2 >> 5) << 26 | (x3 >> 6)).cpu().numpy()
    radius = np.sqrt(log_basic(n1.astype(np.float64) * _TWO_POW_53_INV) * -2.0)
    quadrant = (n2 + (1 << 50)) >> 51
    rest = n2 - (quadrant << 51)
    x = (rest.astype(np.float64) * _TWO_POW_53_INV) * 6.283185307179586
    which = (quadrant + 3 * (index.cpu().numpy() & 1)) & 3
    c, s = cos_basic(x), sin_basic(x)
    value = np.where(which == 0, c, np.where(which == 1, -s, np.where(which == 2, -c, s)))
    return torch.from_numpy(radius * value).to(device)


def philox_normal(seed: int, offset: int, shape, dtype=torch.float64,
                  device: torch.device | str = "cpu") -> Tensor:
    """The noise tensor of `shape`: element with row-major flat index i is noise element i."""
    shape = tuple(int(s) for s in shape)
    count = 1
    for s in shape:
        count *= s
    return normal_flat(seed, offset, 0, count, device).to(dtype).reshape(shape)
