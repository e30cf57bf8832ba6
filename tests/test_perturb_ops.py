"""perturbed_bias_act (and its in-place twin perturbed_bias_act_), perturb_estimate,
node_perturb_grad: the ops against the references fed the same materialised noise, bad inputs,
opcheck, CUDA against CPU."""
import pytest
import torch

from soap_cuda.perturb import philox_normal
from soap_cuda.reference import perturb as ref

from conftest import requires_cuda

bias_act = torch.ops.soap_cuda.perturbed_bias_act.default
bias_act_ = torch.ops.soap_cuda.perturbed_bias_act_.default
estimate = torch.ops.soap_cuda.perturb_estimate.default
node_grad = torch.ops.soap_cuda.node_perturb_grad.default

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
ACTS = ["identity", "relu", "tanh", "sigmoid"]


def seeds():
    return torch.randint(0, 2**62, (2,)).tolist()


def slots(k, anti):
    return k // 2 if anti else k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("num_perturb,antithetic", [(0, False), (1, False), (5, False), (4, True)])
@pytest.mark.parametrize("batch,width", [(1, 1), (3, 17)])
def test_bias_act_matches_reference_with_materialised_noise(dtype, activation, num_perturb,
                                                            antithetic, batch, width):
    seed, offset = seeds()
    pre = torch.randn((num_perturb + 1) * batch, width, dtype=dtype)
    bias = torch.randn(width, dtype=dtype)
    sigma = 0.37
    got = bias_act(pre, bias, sigma, seed, offset, num_perturb, antithetic, activation)
    xi = philox_normal(seed, offset, (slots(num_perturb, antithetic), batch, width), dtype)
    want = ref.perturbed_bias_act_with_noise(pre, bias, sigma, xi, num_perturb, antithetic,
                                             activation)
    torch.testing.assert_close(got, want, **TOL[dtype])
    # written out independently in float64: block 0 clean, block k noisy with sign s_k
    signs = [(-1) ** (k % 2) if antithetic else 1 for k in range(num_perturb)]
    idx = [k // 2 if antithetic else k for k in range(num_perturb)]
    noise = torch.cat([torch.zeros(batch, width, dtype=torch.float64)] +
                      [s * xi[m].double() for s, m in zip(signs, idx)])
    z = pre.double() + bias.double() + sigma * noise
    torch.testing.assert_close(got.double(), ref.ACTIVATIONS[activation](z), **TOL[dtype])


def test_bias_act_without_bias_noncontiguous_and_empty():
    seed, offset = seeds()
    wide = torch.randn(9, 14, dtype=torch.float64)
    pre = wide[:, ::2]
    got = bias_act(pre, None, 0.2, seed, offset, 2, False, "relu")
    torch.testing.assert_close(got, ref.perturbed_bias_act(pre.contiguous(), None, 0.2, seed,
                                                           offset, 2, False, "relu"), rtol=0, atol=0)
    assert bias_act(torch.empty(0, 4), None, 0.2, 1, 2, 3, False, "tanh").shape == (0, 4)
    # sigma = 0: no noise anywhere
    out = bias_act(wide, None, 0.0, seed, offset, 2, False, "tanh")
    torch.testing.assert_close(out, torch.tanh(wide), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("num_perturb,antithetic,batch,width",
                         [(0, False, 3, 5), (5, False, 3, 17), (4, True, 2, 4097)])
def test_in_place_twin_writes_the_same_bits_over_pre(dtype, activation, num_perturb, antithetic,
                                                     batch, width):
    seed, offset = seeds()
    pre = torch.randn((num_perturb + 1) * batch, width, dtype=dtype)
    for bias in (torch.randn(width, dtype=dtype), torch.randn(2 * width, dtype=dtype)[::2], None):
        want = bias_act(pre, bias, 0.37, seed, offset, num_perturb, antithetic, activation)
        buf = pre.clone()
        storage = buf.data_ptr()
        assert bias_act_(buf, bias, 0.37, seed, offset, num_perturb, antithetic, activation) is None
        assert buf.data_ptr() == storage and torch.equal(buf, want)


def test_in_place_twin_marks_pre_written():
    # a backward that saved pre before the in-place write must refuse, on every backend alike
    pre = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    saved = pre * 1.0
    out = saved.exp()  # exp saves its output: `saved` is not it, but `out` is
    version = out._version
    with torch.no_grad():
        bias_act_(out, None, 0.1, 1, 2, 2, False, "tanh")
    assert out._version == version + 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_in_place_twin_rejects_what_it_cannot_write_safely():
    with pytest.raises(RuntimeError, match=r"perturbed_bias_act_: argument 'pre' must be "
                                           r"contiguous"):
        bias_act_(torch.randn(6, 10)[:, ::2], None, 0.1, 1, 2, 2, False, "relu")
    pre = torch.randn(6, 5)
    kept = pre.clone()
    with pytest.raises(RuntimeError, match=r"perturbed_bias_act_: argument 'bias' must not "
                                           r"share memory with 'pre'"):
        bias_act_(pre, pre[2], 0.1, 1, 2, 2, False, "relu")
    with pytest.raises(RuntimeError, match=r"perturbed_bias_act_: argument 'pre' must have "
                                           r"\(num_perturb \+ 1\) \* batch rows"):
        bias_act_(torch.randn(7, 5), None, 0.1, 1, 2, 2, False, "relu")
    assert torch.equal(pre, kept)  # a rejected call writes nothing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_perturb,antithetic", [(1, False), (7, False), (6, True)])
@pytest.mark.parametrize("batch,width", [(1, 1), (5, 13)])
def test_estimate_matches_reference_with_materialised_noise(dtype, num_perturb, antithetic,
                                                            batch, width):
    seed, offset = seeds()
    losses = torch.randn(num_perturb + 1, batch, dtype=dtype)
    got = estimate(losses, width, 0.05, seed, offset, antithetic, 0.25)
    xi = philox_normal(seed, offset, (slots(num_perturb, antithetic), batch, width), torch.float64)
    want = ref.perturb_estimate_with_noise(losses, xi, 0.05, antithetic, 0.25)
    torch.testing.assert_close(got, want, **TOL[dtype])
    # the formula written out: mean over draws of (difference / sigma) * xi
    l64 = losses.double()
    if antithetic:
        coef = (l64[1::2] - l64[2::2]) / 2
    else:
        coef = l64[1:] - l64[0]
    manual = 0.25 * (coef[..., None] / 0.05 * xi).mean(0)
    torch.testing.assert_close(got.double(), manual, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("antithetic", [False, True])
def test_node_grad_matches_reference_and_is_estimate_times_input(dtype, antithetic):
    seed, offset = seeds()
    losses = torch.randn(5, 7, dtype=torch.float64)
    x = torch.randn(7, 11, dtype=dtype)
    gw, gb = node_grad(losses, x, 6, 0.1, seed, offset, antithetic, 1 / 7)
    xi = philox_normal(seed, offset, (slots(4, antithetic), 7, 6), torch.float64)
    rw, rb = ref.node_perturb_grad_with_noise(losses, x, xi, 0.1, antithetic, 1 / 7)
    torch.testing.assert_close(gw, rw, **TOL[dtype])
    torch.testing.assert_close(gb, rb, **TOL[dtype])
    g = estimate(losses, 6, 0.1, seed, offset, antithetic, 1 / 7)
    torch.testing.assert_close(gw.double(), g.t() @ x.double(), **TOL[dtype])
    assert gw.dtype == dtype and gw.shape == (6, 11) and gb.shape == (6,)


def test_same_seed_same_results_run_to_run():
    pre = torch.randn(12, 5)
    a = bias_act(pre, None, 0.1, 3, 4, 3, False, "tanh")
    assert torch.equal(a, bias_act(pre, None, 0.1, 3, 4, 3, False, "tanh"))
    assert not torch.equal(a, bias_act(pre, None, 0.1, 3, 5, 3, False, "tanh"))
    losses = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(estimate(losses, 5, 0.1, 3, 4, False, 1.0),
                       estimate(losses, 5, 0.1, 3, 4, False, 1.0))


def test_opcheck():
    pre = torch.randn(6, 5)
    for args in [(pre, torch.randn(5), 0.1, 1, 2, 2, True, "relu"),
                 (pre.double(), None, 0.0, 1, 2, 0, False, "sigmoid")]:
        torch.library.opcheck(bias_act, args)
    losses = torch.randn(5, 3, dtype=torch.float64)
    torch.library.opcheck(bias_act_, (pre.clone(), torch.randn(5), 0.1, 1, 2, 2, True, "tanh"))
    torch.library.opcheck(estimate, (losses, 4, 0.1, 7, 8, True, 0.5))
    torch.library.opcheck(node_grad, (losses, torch.randn(3, 2), 4, 0.1, 7, 8, False, 1.0))


@pytest.mark.parametrize("call,pattern", [
    (lambda: bias_act(torch.randn(6, 5).int(), None, 0.1, 1, 2, 2, False, "relu"),
     r"perturbed_bias_act: argument 'pre' must be float32 or float64"),
    (lambda: bias_act(torch.randn(6), None, 0.1, 1, 2, 2, False, "relu"),
     r"perturbed_bias_act: argument 'pre' must be 2-D"),
    (lambda: bias_act(torch.randn(7, 5), None, 0.1, 1, 2, 2, False, "relu"),
     r"argument 'pre' must have \(num_perturb \+ 1\) \* batch rows"),
    (lambda: bias_act(torch.randn(6, 5), None, 0.1, 1, 2, -1, False, "relu"),
     r"argument 'num_perturb' must be >= 0"),
    (lambda: bias_act(torch.randn(8, 5), None, 0.1, 1, 2, 3, True, "relu"),
     r"argument 'num_perturb' must be even with antithetic pairs"),
    (lambda: bias_act(torch.randn(6, 5), None, float("nan"), 1, 2, 2, False, "relu"),
     r"argument 'sigma' must be finite and >= 0"),
    (lambda: bias_act(torch.randn(6, 5), torch.randn(4), 0.1, 1, 2, 2, False, "relu"),
     r"argument 'bias' must have shape \[5\]"),
    (lambda: bias_act(torch.randn(6, 5), torch.randn(5).double(), 0.1, 1, 2, 2, False, "relu"),
     r"argument 'bias' must have the dtype of 'pre'"),
    (lambda: bias_act(torch.randn(6, 5), None, 0.1, 1, 2, 2, False, "gelu"),
     r"argument 'activation' must be one of identity, relu, tanh, sigmoid, got 'gelu'"),
    (lambda: estimate(torch.randn(1, 3), 4, 0.1, 1, 2, False, 1.0),
     r"perturb_estimate: argument 'losses' must be 2-D \[num_perturb \+ 1, batch\]"),
    (lambda: estimate(torch.randn(4, 3), 4, 0.1, 1, 2, True, 1.0),
     r"argument 'losses' must have an even num_perturb with antithetic pairs"),
    (lambda: estimate(torch.randn(3, 3), 4, 0.0, 1, 2, False, 1.0),
     r"argument 'sigma' must be finite and > 0"),
    (lambda: estimate(torch.randn(3, 3), -1, 0.1, 1, 2, False, 1.0),
     r"argument 'width' must be >= 0"),
    (lambda: node_grad(torch.randn(3, 3), torch.randn(4, 2), 4, 0.1, 1, 2, False, 1.0),
     r"node_perturb_grad: argument 'input' must have one row per example of 'losses' \(3\)"),
    (lambda: node_grad(torch.randn(3, 3), torch.randn(3), 4, 0.1, 1, 2, False, 1.0),
     r"node_perturb_grad: argument 'input' must be 2-D"),
    (lambda: node_grad(torch.randn(3, 3), torch.randn(3, 2).half(), 4, 0.1, 1, 2, False, 1.0),
     r"node_perturb_grad: argument 'input' must be float32 or float64"),
])
def test_bad_input_is_rejected_with_a_clear_message(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_device_mismatch_is_rejected():
    with pytest.raises(RuntimeError, match=r"device"):
        bias_act(torch.randn(6, 5), torch.randn(5, device="meta"), 0.1, 1, 2, 2, False, "relu")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("antithetic", [False, True])
def test_cuda_matches_cpu(dtype, antithetic):
    seed, offset = seeds()
    pre = torch.randn(5 * 33, 70, dtype=dtype)
    for bias in (torch.randn(70, dtype=dtype), None):
        for activation in ACTS:
            cpu = bias_act(pre, bias, 0.3, seed, offset, 4, antithetic, activation)
            cuda = bias_act(pre.cuda(), None if bias is None else bias.cuda(), 0.3, seed, offset,
                            4, antithetic, activation).cpu()
            if activation in ("identity", "relu"):
                # noise, bias add and z + sigma xi are explicitly rounded on both: same bits
                assert torch.equal(cuda, cpu), activation
            else:  # tanh / exp come from libdevice on CUDA and from libm on the CPU
                torch.testing.assert_close(cuda, cpu, **TOL[dtype])
        buf = pre.cuda()
        bias_act_(buf, None if bias is None else bias.cuda(), 0.3, seed, offset, 4, antithetic,
                  "relu")
        assert torch.equal(buf.cpu(), bias_act(pre, bias, 0.3, seed, offset, 4, antithetic,
                                               "relu"))
    losses = torch.randn(5, 33, dtype=torch.float64)
    x = torch.randn(33, 9, dtype=dtype)
    # same noise, same float64 accumulation order, no FMA: the same bits
    assert torch.equal(estimate(losses.cuda(), 70, 0.1, seed, offset, antithetic, 0.5).cpu(),
                       estimate(losses, 70, 0.1, seed, offset, antithetic, 0.5))
    # the GEMM and the column sum run in cuBLAS / CUDA summation order: in float32 the rounding
    # of 33-term sums of values ~3.5 differs from the CPU's by a few 1e-6 absolute, so atol 1e-4
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for got, want in zip(node_grad(losses.cuda(), x.cuda(), 70, 0.1, seed, offset, antithetic, 0.5),
                         node_grad(losses, x, 70, 0.1, seed, offset, antithetic, 0.5)):
        torch.testing.assert_close(got.cpu(), want, **tol)
