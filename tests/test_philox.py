"""philox_normal_fill: the noise every perturbation kernel regenerates, checked bit for bit."""
import math

import pytest
import torch

from soap_cuda.reference import philox as ref_philox
from soap_cuda.reference import philox_normal_fill as ref_fill

from conftest import requires_cuda

op = torch.ops.soap_cuda.philox_normal_fill.default


def fill(shape, seed, offset, dtype=torch.float64, device="cpu"):
    out = torch.empty(shape, dtype=dtype, device=device)
    op(out, seed, offset)
    return out


def test_philox_known_answers():
    """Random123's published Philox4x32-10 test vectors."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        words = ref_philox.philox4x32_10([torch.tensor([c]) for c in counter], key)
        assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_op_is_bit_identical_to_the_python_philox(dtype):
    seed, offset = torch.randint(-2**62, 2**62, (2,)).tolist()
    got = fill((3, 20001), seed, offset, dtype)
    want = ref_philox.philox_normal(seed, offset, (3, 20001), dtype)
    assert torch.equal(got.view(torch.int64 if dtype == torch.float64 else torch.int32),
                       want.view(torch.int64 if dtype == torch.float64 else torch.int32))


def test_extreme_seeds_offsets_and_large_indices():
    for seed, offset in [(0, 0), (-1, -1), (2**63 - 1, -2**63), (1, 2**32)]:
        torch.testing.assert_close(fill((9,), seed, offset), ref_philox.philox_normal(seed, offset, (9,)),
                                   rtol=0, atol=0)
    # elements beyond 2^32 (the counter's high word): the flat-range reference against slices
    start = 2**32 + 5
    want = ref_philox.normal_flat(7, 3, start, 6)
    torch.testing.assert_close(ref_philox.normal_flat(7, 3, start - 2, 8)[2:], want, rtol=0, atol=0)


def test_basic_log_sin_cos_are_accurate():
    """The hand-written transcendentals: within a few ulp of the library ones."""
    import numpy as np
    u = torch.rand(20000, dtype=torch.float64).numpy() + 1e-300
    assert np.max(np.abs(ref_philox.log_basic(u) - np.log(u)) / np.abs(np.log(u))) < 1e-15
    x = (torch.rand(20000, dtype=torch.float64).numpy() - 0.5) * (math.pi / 2)
    assert np.max(np.abs(ref_philox.sin_basic(x) - np.sin(x))) < 3e-16
    assert np.max(np.abs(ref_philox.cos_basic(x) - np.cos(x))) < 3e-16


def test_noise_is_standard_normal():
    z = fill((200000,), 123, 4)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs((z**3).mean().item()) < 0.03 and abs((z**4).mean().item() - 3) < 0.06
    # pairs share one Philox call (cos and sin halves): they must still be uncorrelated
    assert abs((z[0::2] * z[1::2]).mean().item()) < 0.015
    # the normal CDF at a few points
    for q, p in [(-1.0, 0.158655), (0.0, 0.5), (1.5, 0.933193)]:
        assert abs((z < q).double().mean().item() - p) < 0.005


def test_streams_differ_by_seed_and_offset_and_repeat_exactly():
    a = fill((1000,), 5, 0)
    assert torch.equal(a, fill((1000,), 5, 0))
    for other in (fill((1000,), 6, 0), fill((1000,), 5, 1)):
        assert abs(torch.corrcoef(torch.stack((a, other)))[0, 1].item()) < 0.15
        assert not torch.equal(a, other)


def test_noncontiguous_target_gets_the_row_major_noise():
    base = torch.zeros(6, 10, dtype=torch.float64)
    view = base[:, ::2]
    op(view, 9, 1)
    torch.testing.assert_close(view, ref_philox.philox_normal(9, 1, (6, 5)), rtol=0, atol=0)
    assert torch.all(base[:, 1::2] == 0)


def test_matches_reference_kernel_and_opcheck():
    got = fill((4, 5), 1, 2, torch.float32)
    want = torch.empty(4, 5)
    ref_fill(want, 1, 2)
    assert torch.equal(got, want)
    torch.library.opcheck(op, (torch.empty(3, 7), 11, 12))
    torch.library.opcheck(op, (torch.empty(0, dtype=torch.float64), 11, 12))


def test_bad_input_is_rejected():
    with pytest.raises(RuntimeError, match=r"philox_normal_fill: argument 'noise' must be float32 or float64"):
        op(torch.empty(3, dtype=torch.int64), 1, 2)
    with pytest.raises(RuntimeError, match=r"argument 'noise' must be float32 or float64"):
        op(torch.empty(3, dtype=torch.float16), 1, 2)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_is_bit_identical_to_cpu(dtype):
    seed, offset = torch.randint(-2**62, 2**62, (2,)).tolist()
    cpu = fill((5, 100003), seed, offset, dtype)
    cuda = fill((5, 100003), seed, offset, dtype, "cuda").cpu()
    assert torch.equal(cpu, cuda)
    # a non-contiguous target: filled through a contiguous buffer, element i in row-major order
    target = torch.zeros(6, 4, 2, dtype=dtype, device="cuda")[:, 1:3, 0].t()
    op(target, seed, offset)
    assert torch.equal(target.cpu(), fill((2, 6), seed, offset, dtype))
