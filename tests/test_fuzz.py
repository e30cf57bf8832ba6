"""Property tests: over shapes, strides, dtypes and rules, the dispatched op (native kernels
when built) equals the pure-PyTorch reference, which is the Python fallback's kernel.

Budget: SOAP_CUDA_FUZZ_EXAMPLES examples per property (default 300, about a second each)."""
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soap_cuda.reference.fa_linear import fa_linear as ref_forward
from soap_cuda.reference.fa_linear import fa_linear_backward as ref_backward
from soap_cuda.reference.feedback_sync import feedback_sync_ as ref_sync

EXAMPLES = int(os.environ.get("SOAP_CUDA_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}
LAYOUTS = ["contiguous", "transposed", "strided", "expanded"]


def laid_out(shape, dtype, layout, gen):
    """A tensor of `shape` with the given memory layout (values drawn from `gen`)."""
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(*reversed(shape), dtype=dtype, generator=gen).permute(
            *reversed(range(len(shape))))
    if layout == "strided" and len(shape) >= 1:
        return torch.randn(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype, generator=gen)[..., 1::2]
    if layout == "expanded" and len(shape) >= 2:
        return torch.randn(1, *shape[1:], dtype=dtype, generator=gen).expand(*shape)
    return torch.randn(*shape, dtype=dtype, generator=gen)


@st.composite
def fa_cases(draw):
    return dict(
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        lead=draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)),
        in_f=draw(st.integers(1, 24)), out_f=draw(st.integers(1, 24)),
        x_layout=draw(st.sampled_from(LAYOUTS)), w_layout=draw(st.sampled_from(LAYOUTS)),
        b_layout=draw(st.sampled_from(LAYOUTS)), bias=draw(st.booleans()),
        mask=draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
        seed=draw(st.integers(0, 2**31 - 1)))


@SETTINGS
@given(fa_cases())
def test_fa_linear_native_equals_reference(case):
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, lead, in_f, out_f = case["dtype"], case["lead"], case["in_f"], case["out_f"]
    x = laid_out((*lead, in_f), dtype, case["x_layout"], gen)
    w = laid_out((out_f, in_f), dtype, case["w_layout"], gen)
    B = laid_out((out_f, in_f), dtype, case["b_layout"], gen)
    b = torch.randn(out_f, dtype=dtype, generator=gen) if case["bias"] else None
    g = torch.randn(*lead, out_f, dtype=dtype, generator=gen)
    y = torch.ops.soap_cuda.fa_linear(x, w, b, B)
    torch.testing.assert_close(y, ref_forward(x, w, b, B), **TOL[dtype])
    mask = [case["mask"][0], case["mask"][1], case["mask"][2] and case["bias"]]
    got = torch.ops.soap_cuda.fa_linear_backward(g, x, B, mask)
    want = ref_backward(g, x, B, mask)
    for a, r in zip(got, want):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, **TOL[dtype])


@st.composite
def sync_cases(draw):
    n = draw(st.integers(1, 5))
    return dict(
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])),
        shapes=[(draw(st.integers(0, 40)), draw(st.integers(1, 40))) for _ in range(n)],
        magnitude=[draw(st.booleans()) for _ in range(n)],
        scales=[draw(st.sampled_from([1.0, 0.5, 1e-3, 3.7])) for _ in range(n)],
        zero_fraction=draw(st.sampled_from([0.0, 0.3])),
        seed=draw(st.integers(0, 2**31 - 1)))


@SETTINGS
@given(sync_cases())
def test_feedback_sync_native_equals_reference_bit_for_bit(case):
    gen = torch.Generator().manual_seed(case["seed"])
    weights, mags = [], []
    for shape, has_mag in zip(case["shapes"], case["magnitude"]):
        w = torch.randn(shape, generator=gen)
        w[torch.rand(shape, generator=gen) < case["zero_fraction"]] = 0.0
        weights.append(w.to(case["dtype"]))
        mags.append(torch.randn(shape, generator=gen).to(case["dtype"]) if has_mag else None)
    scales = torch.tensor(case["scales"], dtype=torch.float64)
    got = [torch.empty_like(w) for w in weights]
    want = [torch.empty_like(w) for w in weights]
    torch.ops.soap_cuda.feedback_sync_(weights, got, mags, scales)
    ref_sync(weights, want, mags, scales)
    for a, r in zip(got, want):
        assert torch.equal(a, r)
