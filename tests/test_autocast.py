"""Autocast of fa_linear and fa_conv, done by the ops' own autocast kernels (C++ in the native
library, ops/autocast.py in the fallback): results judged against float64 (at most 2x the error
of nn.Linear / nn.Conv2d doing the same products), and B's low-precision copy, cached across
autocast regions, invalidated by a sync, a load_state_dict and an in-place edit of B."""
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad

import soap_cuda
from soap_cuda import FAConv2d, FALinear

from conftest import devices

NATIVE = soap_cuda.backend() != "python"
_native = soap_cuda._library._native


def low(device):
    return torch.bfloat16 if device == "cpu" else torch.float16


def err(a, ref):
    return (a.double() - ref).abs().max().item()


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _run_under_autocast(fn, x, weight, b, g, device, dtype) -> dict:
    """fn(x, weight, b) under autocast, backward from g: the output and the three gradients."""
    xs, ws, bs = _leaves(x, weight, b)
    with torch.autocast(device, dtype=dtype):
        y = fn(xs, ws, bs)
    y.backward(g.to(y.dtype))
    return {"y": y, "x": xs.grad, "w": ws.grad, "b": bs.grad}


# --- results against float64 -------------------------------------------------------------------

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_fa_linear_error_is_at_most_twice_nn_linears(device, noncontiguous):
    dtype = low(device)
    x = torch.randn(37, 2 * 61, device=device)[:, ::2] if noncontiguous \
        else torch.randn(37, 61, device=device)
    w, b, B = (torch.randn(29, 61, device=device) * 0.2, torch.randn(29, device=device),
               torch.randn(29, 61, device=device) * 0.2)
    g = torch.randn(37, 29, device=device)
    x64, w64, b64, B64, g64 = (t.double() for t in (x, w, b, B, g))
    want = {"y": x64 @ w64.t() + b64, "x": g64 @ B64, "w": g64.t() @ x64, "b": g64.sum(0)}

    def run(fn, weight):
        return _run_under_autocast(fn, x, weight, b, g, device, dtype)

    fa = run(lambda xs, ws, bs: soap_cuda.fa_linear(xs, ws, bs, B), w)
    assert fa["y"].dtype == dtype and fa["w"].dtype == torch.float32
    pt = run(F.linear, w)
    pt_b = run(F.linear, B)  # nn.Linear with B as its weight: the same grad_input product
    for key, ref in (("y", pt), ("w", pt), ("b", pt), ("x", pt_b)):
        assert err(fa[key], want[key]) <= 2 * err(ref[key], want[key]) + 1e-6, key


@pytest.mark.parametrize("device", devices())
def test_fa_conv_error_is_at_most_twice_nn_conv2ds(device):
    dtype = low(device)
    stride, padding, dilation, groups = [2, 1], [1, 0], [1, 2], 2
    x = torch.randn(3, 4, 11, 9, device=device)
    w, b, B = (torch.randn(6, 2, 3, 3, device=device) * 0.3, torch.randn(6, device=device),
               torch.randn(6, 2, 3, 3, device=device) * 0.3)
    x64, w64, b64, B64 = (t.double() for t in (x, w, b, B))
    y64 = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    g = torch.randn(y64.shape, device=device)
    g64 = g.double()
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    want = {"y": y64, "x": nn_grad.conv2d_input(x.shape, B64, g64, **geo),
            "w": nn_grad.conv2d_weight(x64, w.shape, g64, **geo), "b": g64.sum((0, 2, 3))}

    def run(fn, weight):
        return _run_under_autocast(fn, x, weight, b, g, device, dtype)

    fa = run(lambda xs, ws, bs: soap_cuda.fa_conv(xs, ws, bs, B, stride, padding, dilation,
                                                  groups), w)
    assert fa["y"].dtype == dtype and fa["w"].dtype == torch.float32
    pt = run(lambda xs, ws, bs: F.conv2d(xs, ws, bs, stride, padding, dilation, groups), w)
    pt_b = run(lambda xs, ws, bs: F.conv2d(xs, ws, bs, stride, padding, dilation, groups), B)
    for key, ref in (("y", pt), ("w", pt), ("b", pt), ("x", pt_b)):
        assert err(fa[key], want[key]) <= 2 * err(ref[key], want[key]) + 1e-6, key


@pytest.mark.parametrize("name", ["fa_linear", "fa_conv"])
def test_the_raw_op_casts_under_autocast(name):
    """The op itself, not only the layer, follows autocast (its kernels' own GEMMs once recast
    a float32 call halfway and broke its backward)."""
    torch.manual_seed(0)
    if name == "fa_linear":
        layer, x = FALinear(6, 4), torch.randn(3, 6)
        call = lambda xs: torch.ops.soap_cuda.fa_linear(xs, layer.weight, layer.bias,
                                                        layer.b_matrix)
    else:
        layer, x = FAConv2d(2, 3, 3), torch.randn(2, 2, 5, 5)
        call = lambda xs: torch.ops.soap_cuda.fa_conv(xs, layer.weight, layer.bias,
                                                      layer.b_matrix, [1, 1], [0, 0], [1, 1], 1)
    xs, xl = _leaves(x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_op, y_layer = call(xs), layer(xl)
    assert y_op.dtype == torch.bfloat16
    torch.testing.assert_close(y_op, y_layer, rtol=0, atol=0)
    y_op.float().sum().backward()
    y_layer.float().sum().backward()
    assert xs.grad.dtype == torch.float32
    torch.testing.assert_close(xs.grad, xl.grad, rtol=0, atol=0)


def test_float64_operands_stay_float64():
    layer = FAConv2d(2, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(1, 2, 4, 4, dtype=torch.float64)).dtype == torch.float64


# --- B's cached low-precision copy ---------------------------------------------------------------

def _layer(kind, device, **kw):
    torch.manual_seed(3)
    if kind == "linear":
        return FALinear(7, 5, device=device, **kw), torch.randn(4, 7, device=device)
    return FAConv2d(3, 4, 3, padding=1, device=device, **kw), \
        torch.randn(2, 3, 6, 5, device=device)


def _grad_input(layer, x, device):
    xs = x.clone().requires_grad_()
    with torch.autocast(device, dtype=low(device)):
        y = layer(xs)
    y.backward(torch.ones_like(y))
    return xs.grad


def _expected_grad_input(layer, x, device):
    """grad_input through the current B in the autocast dtype, computed here."""
    dtype = low(device)
    B = layer.b_matrix.detach().to(dtype)
    if isinstance(layer, FALinear):
        g = torch.ones(x.shape[0], B.shape[0], dtype=dtype, device=device)
        return (g @ B).float()
    y = layer(x)
    g = torch.ones(y.shape, dtype=dtype, device=device)
    return torch.ops.aten.convolution_backward(
        g, x.to(dtype), B, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [True, False, False])[0].float()


def _change_by_sync(layer):
    soap_cuda.sync_feedback(layer)


def _change_by_load(layer):
    state = layer.state_dict()
    state["b_matrix"] = -2 * state["b_matrix"] + 0.25
    layer.load_state_dict(state)


def _change_in_place(layer):
    with torch.no_grad():
        layer.b_matrix.mul_(-3).add_(0.5)


@pytest.mark.parametrize("change", [_change_by_sync, _change_by_load, _change_in_place],
                         ids=["sync", "load_state_dict", "in_place"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("device", devices())
def test_a_change_of_b_invalidates_its_cached_cast(device, kind, change):
    # bit-exact on the CPU; cuDNN/cuBLAS may pick other algorithms call to call (a stale B
    # would be off by far more: every change below moves B by O(1))
    tol = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=1e-2, atol=1e-2)
    layer, x = _layer(kind, device, feedback="sign")
    first = _grad_input(layer, x, device)  # caches B's cast (native)
    torch.testing.assert_close(first, _expected_grad_input(layer, x, device), **tol)
    change(layer)
    got = _grad_input(layer, x, device)
    assert (got - first).abs().max() > 0.1  # B did change
    torch.testing.assert_close(got, _expected_grad_input(layer, x, device), **tol)


def _casts_in_forward(layer, x, **autocast):
    with torch.autograd.profiler.profile() as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16, **autocast):
            layer(x)
    return sum(1 for e in prof.function_events if e.name == "aten::_to_copy")


@pytest.mark.skipif(not NATIVE, reason="the cache is the native library's")
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_b_is_cast_once_across_autocast_regions(kind):
    layer, x = _layer(kind, "cpu")
    first, second = _casts_in_forward(layer, x), _casts_in_forward(layer, x)
    assert (first, second) == (4, 3)  # x, W, bias every region; B once
    # autocast(cache_enabled=False) turns caching off, as it does ATen's
    assert _casts_in_forward(layer, x, cache_enabled=False) == 4


@pytest.mark.skipif(not NATIVE, reason="the cache is the native library's")
def test_the_cache_does_not_outlive_its_feedback_matrix():
    layer, x = _layer("linear", "cpu")
    before = _native._feedback_cast_count()
    _grad_input(layer, x, "cpu")
    assert _native._feedback_cast_count() == before + 1
    del layer
    gc.collect()
    assert _native._feedback_cast_count() == before
    _native._clear_feedback_casts()
    assert _native._feedback_cast_count() == 0


def test_kolen_pollack_b_under_autocast_gets_fp32_gradients():
    torch.manual_seed(4)
    model = nn.Sequential(FALinear(6, 8, feedback="kolen_pollack"), nn.Tanh(),
                          FALinear(8, 3, feedback="kolen_pollack"))
    x = torch.randn(5, 6)
    for _ in range(2):  # the second step must not reuse the first step's cast of B
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().sum()
        loss.backward()
        for layer in (model[0], model[2]):
            assert layer.b_matrix.grad.dtype == torch.float32
            torch.testing.assert_close(layer.b_matrix.grad, layer.weight.grad, rtol=0, atol=0)
        with torch.no_grad():
            model[2].b_matrix.add_(0.1)


def test_opcheck_under_autocast():
    """The ops' autocast kernels keep schema, autograd, fake-tensor and AOT-dispatch checks."""
    req = dict(requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.library.opcheck(torch.ops.soap_cuda.fa_linear.default,
                              (torch.randn(5, 7, **req), torch.randn(3, 7, **req),
                               torch.randn(3, **req), torch.randn(3, 7)), atol=1e-2, rtol=1e-2)
        torch.library.opcheck(torch.ops.soap_cuda.fa_conv.default,
                              (torch.randn(2, 4, 6, 5, **req), torch.randn(6, 2, 3, 3, **req),
                               torch.randn(6, **req), torch.randn(6, 2, 3, 3),
                               [1, 2], [1, 0], [1, 1], 2), atol=1e-2, rtol=1e-2)
