"""fa_linear: the op and FALinear held against the reference kernels and the seed's FALinear."""
import pytest
import torch
from torch import nn

import soap_cuda
from soap_cuda import FALinear
from soap_cuda.reference import SeedFALinear
from soap_cuda.reference import fa_linear as ref_fa_linear
from soap_cuda.reference import fa_linear_backward as ref_fa_linear_backward

from conftest import requires_cuda

op = torch.ops.soap_cuda.fa_linear.default
op_backward = torch.ops.soap_cuda.fa_linear_backward.default

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}

# (input shape, out_features): one row, odd sizes, 3-D and 1-D inputs, a wide layer
SHAPES = [((1, 5), 3), ((7, 13), 11), ((2, 5, 9), 4), ((9,), 6), ((33, 65), 129)]


def make_args(in_shape, out_features, dtype, device="cpu", bias=True, noncontiguous=False):
    in_features = in_shape[-1]
    if noncontiguous:  # same values, strided: every other column of a wider tensor
        x = torch.randn(*in_shape[:-1], 2 * in_features, dtype=dtype, device=device)[..., ::2]
        assert not x.is_contiguous()
    else:
        x = torch.randn(*in_shape, dtype=dtype, device=device)
    w = torch.randn(out_features, in_features, dtype=dtype, device=device)
    b = torch.randn(out_features, dtype=dtype, device=device) if bias else None
    B = torch.randn(out_features, in_features, dtype=dtype, device=device)
    return x, w, b, B


def fa_grads(x, w, b, B, grad_out):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = op(leaves[0], leaves[1], leaves[2], B)
    y.backward(grad_out)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("in_shape,out_features", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_op_matches_reference(dtype, in_shape, out_features, bias, noncontiguous):
    x, w, b, B = make_args(in_shape, out_features, dtype, bias=bias, noncontiguous=noncontiguous)
    g = torch.randn(*in_shape[:-1], out_features, dtype=dtype)
    y, (gx, gw, gb) = fa_grads(x, w, b, B, g)
    torch.testing.assert_close(y, ref_fa_linear(x, w, b, B), **TOL[dtype])
    rx, rw, rb = ref_fa_linear_backward(g, x, B, [True, True, bias])
    torch.testing.assert_close(gx, rx, **TOL[dtype])
    torch.testing.assert_close(gw, rw, **TOL[dtype])
    if bias:
        torch.testing.assert_close(gb, rb, **TOL[dtype])
    # independent check in float64: the FA formulas written out
    x64, g64 = x.double().reshape(-1, x.shape[-1]), g.double().reshape(-1, out_features)
    torch.testing.assert_close(gx.double().reshape(-1, x.shape[-1]), g64 @ B.double(),
                               **TOL[dtype])
    torch.testing.assert_close(gw.double(), g64.t() @ x64, **TOL[dtype])


def test_backward_skips_unrequested_gradients():
    x, w, b, B = make_args((4, 6), 3, torch.float64)
    g = torch.randn(4, 3, dtype=torch.float64)
    gx, gw, gb = op_backward(g, x, B, [False, True, False])
    assert gx is None and gb is None and gw.shape == w.shape
    # first layer: the input needs no grad, so none is computed and none is returned
    wl = w.clone().requires_grad_()
    op(x, wl, b, B).backward(g)
    assert wl.grad is not None


def test_graph_is_recorded_exactly_when_a_gradient_is_wanted():
    x, w, b, B = make_args((4, 6), 3, torch.float64)
    want = x @ w.T + b
    with torch.no_grad():  # evaluation: no node, same numbers
        out = op(x, w.requires_grad_(), b, B)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, want, rtol=0, atol=1e-13)
    frozen = op(x, w.detach(), b, B)  # nothing requires grad
    assert frozen.grad_fn is None and torch.equal(frozen, out)
    xg = x.clone().requires_grad_()  # frozen layer, input wants its gradient: through B
    g = torch.randn(4, 3, dtype=torch.float64)
    op(xg, w.detach(), b, B).backward(g)
    torch.testing.assert_close(xg.grad, g @ B, rtol=0, atol=1e-13)
    bg = b.clone().requires_grad_()  # only the bias wants one
    op(x, w.detach(), bg, B).backward(g)
    torch.testing.assert_close(bg.grad, g.sum(0), rtol=0, atol=1e-13)


@pytest.mark.parametrize("in_shape,out_features", SHAPES)
def test_b_equal_w_is_backprop(in_shape, out_features):
    """With b_matrix := weight, FA is backprop: gradients equal nn.Linear's autograd exactly."""
    x, w, b, _ = make_args(in_shape, out_features, torch.float64)
    g = torch.randn(*in_shape[:-1], out_features, dtype=torch.float64)
    _, fa = fa_grads(x, w, b, w.detach(), g)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    torch.nn.functional.linear(*leaves).backward(g)
    for got, want in zip(fa, (t.grad for t in leaves)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradcheck_when_b_is_w():
    x, w, b, _ = make_args((3, 5, 4), 6, torch.float64)
    inputs = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, b, w.detach()), inputs)


@pytest.mark.parametrize("in_shape,out_features", [((3, 5), 4), ((2, 3, 5), 6)])
def test_double_backward_is_exact(in_shape, out_features):
    """create_graph=True through an FA layer: the backward op has its own derivative."""
    x, w, b, B = make_args(in_shape, out_features, torch.float64)
    inputs = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradgradcheck(lambda x, w, b: op(x, w, b, B), inputs)
    g = torch.randn(*in_shape[:-1], out_features, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda g, x: op_backward(g, x, B, [True, True, True]), (g, x.detach().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("in_shape,out_features", [((1, 5), 3), ((2, 5, 9), 4), ((7, 13), 11)])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(dtype, in_shape, out_features, bias):
    x, w, b, B = make_args(in_shape, out_features, dtype, bias=bias)
    x.requires_grad_(), w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    torch.library.opcheck(op, (x, w, b, B))
    g = torch.randn(*in_shape[:-1], out_features, dtype=dtype)
    for mask in ([True, True, bias], [False, True, False]):
        torch.library.opcheck(op_backward, (g, x.detach(), B, mask))


def test_matches_seed_falinear_after_loading_its_state_dict():
    torch.manual_seed(1)
    seed_layer = SeedFALinear(20, 7).double()
    layer = FALinear(20, 7, dtype=torch.float64)
    layer.load_state_dict(seed_layer.state_dict(), strict=True)
    x = torch.randn(16, 20, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(16, 7, dtype=torch.float64)
    seed_layer(x).backward(g)
    y = layer(x2)
    y.backward(g)
    torch.testing.assert_close(y, seed_layer(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, seed_layer.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, seed_layer.bias.grad, rtol=1e-12, atol=1e-12)


def test_same_torch_seed_gives_the_seed_classes_initialisation():
    torch.manual_seed(7)
    a = nn.Sequential(SeedFALinear(10, 8), SeedFALinear(8, 3))
    torch.manual_seed(7)
    b = nn.Sequential(FALinear(10, 8), FALinear(8, 3))
    ours = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(ours[key], value), key
    assert torch.all(b[0].bias == 0)


def test_module_is_a_swap_in_for_nn_linear():
    layer = FALinear(6, 4, bias=False)
    assert layer.bias is None and "bias=False" in repr(layer)
    assert repr(FALinear(6, 4)) == "FALinear(in_features=6, out_features=4, bias=True)"
    assert [n for n, _ in FALinear(6, 4).named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in FALinear(6, 4).named_buffers()] == ["b_matrix"]
    linear = nn.Linear(6, 4)
    fa = FALinear(6, 4)
    fa.load_state_dict({**linear.state_dict(), "b_matrix": fa.b_matrix})
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(fa(x), linear(x))
    assert FALinear(6, 4, dtype=torch.float64).weight.dtype == torch.float64


@pytest.mark.parametrize("wrap", ["parametrize", "weight_norm", "bias_parametrize"])
def test_parametrized_weight_and_bias_are_used(wrap):
    # forward reads weight/bias from the parameter dict on its fast path; a parametrized or
    # weight-normed layer keeps them elsewhere and must still be used, with gradients flowing.
    from torch.nn.utils import parametrizations, parametrize

    class Double(nn.Module):
        def forward(self, t):
            return 2 * t

    torch.manual_seed(0)
    layer = FALinear(5, 3, dtype=torch.float64)
    if wrap == "parametrize":
        parametrize.register_parametrization(layer, "weight", Double())
    elif wrap == "bias_parametrize":
        parametrize.register_parametrization(layer, "bias", Double())
        with torch.no_grad():
            layer.parametrizations.bias.original.uniform_(-1, 1)
    else:
        layer = parametrizations.weight_norm(layer)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias, rtol=0, atol=1e-12)
    layer(x).sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

def test_convert_keeps_weights_and_reports():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3)))
    x = torch.randn(4, 5)
    converted, swapped = soap_cuda.convert(model, return_swapped=True,
                                           generator=torch.Generator().manual_seed(0))
    assert swapped == ["0", "2.0"]
    assert isinstance(converted[0], FALinear) and isinstance(converted[2][0], FALinear)
    assert isinstance(model[0], nn.Linear)  # not in place by default
    torch.testing.assert_close(converted(x), model(x))
    again = soap_cuda.convert(model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0].b_matrix, converted[0].b_matrix)
    kept, swapped = soap_cuda.convert(model, skip=("0",), return_swapped=True)
    assert swapped == ["2.0"] and type(kept[0]) is nn.Linear


@pytest.mark.parametrize("case,pattern", [
    ("weight_1d", r"argument 'weight' must be 2-D"),
    ("in_features", r"argument 'input' must end in in_features=5"),
    ("b_shape", r"argument 'b_matrix' must have the shape of 'weight'"),
    ("bias_shape", r"argument 'bias' must have shape \[3\]"),
    ("dtype", r"argument 'weight' must have the dtype of 'input'"),
    ("b_dtype", r"argument 'b_matrix' must have the dtype of 'input'"),
    ("int_input", r"argument 'input' must be a floating-point tensor"),
    ("scalar", r"argument 'input' must have at least 1 dimension"),
])
def test_bad_input_is_rejected_with_a_clear_message(case, pattern):
    x, w, b, B = make_args((4, 5), 3, torch.float32)
    args = {
        "weight_1d": (x, w[0], b, B), "in_features": (x[:, :4], w, b, B),
        "b_shape": (x, w, b, B.t()), "bias_shape": (x, w, b[:2], B),
        "dtype": (x, w.double(), b, B), "b_dtype": (x, w, b, B.double()),
        "int_input": (x.int(), w, b, B), "scalar": (x[0, 0], w, b, B),
    }[case]
    with pytest.raises(RuntimeError, match=pattern):
        op(*args)


def test_bad_backward_input_is_rejected():
    x, w, b, B = make_args((4, 5), 3, torch.float32)
    with pytest.raises(RuntimeError, match=r"argument 'grad_output' must have shape"):
        op_backward(torch.randn(4, 2), x, B, [True, True, True])
    with pytest.raises(RuntimeError, match=r"argument 'b_matrix' must have the dtype"):
        op_backward(torch.randn(4, 3), x, B.double(), [True, True, True])


def test_device_mismatch_is_rejected():
    x, w, b, B = make_args((4, 5), 3, torch.float32)
    with pytest.raises(RuntimeError, match=r"device"):
        op(x, w, b, B.to("meta"))


def test_empty_batch_gives_empty_output_and_zero_weight_grads():
    x, w, b, B = make_args((0, 5), 3, torch.float64)
    y, (gx, gw, gb) = fa_grads(x, w, b, B, torch.zeros(0, 3, dtype=torch.float64))
    assert y.shape == (0, 3) and gx.shape == (0, 5)
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


def test_nan_propagates():
    x, w, b, B = make_args((4, 5), 3, torch.float64)
    x[1, 2] = float("nan")
    y = op(x, w, b, B)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


def test_autocast_cpu_bfloat16_grads_close_to_float32():
    torch.manual_seed(0)
    model = nn.Sequential(FALinear(32, 64), nn.ReLU(), FALinear(64, 10))
    x, target = torch.randn(16, 32), torch.randint(0, 10, (16,))
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), target).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = loss_fn(out, target)
    loss.backward()
    for p, g in zip(model.parameters(), want):
        assert p.grad.dtype == torch.float32  # fp32 master weights get fp32 gradients
        assert (p.grad - g).norm() <= 0.05 * g.norm()
    assert model[0].b_matrix.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_autocast_casts_what_nn_linear_casts(dtype):
    # float64 is left alone by autocast, everything else goes to the autocast dtype
    linear = nn.Linear(6, 4, dtype=dtype)
    fa = FALinear(6, 4, dtype=dtype)
    fa.load_state_dict({**linear.state_dict(), "b_matrix": fa.b_matrix})
    x = torch.randn(3, 6, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = linear(x), fa(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torch_func_transforms_follow_the_fa_rule():
    from torch.func import functional_call, grad, jacrev, vmap
    torch.manual_seed(0)
    layer = FALinear(5, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = dict(layer.named_buffers())
    x = torch.randn(4, 2, 5, dtype=torch.float64)

    def loss(p, xi):
        return (functional_call(layer, (p, buffers), (xi,)) ** 2).sum()

    xr = x.clone().requires_grad_()
    (layer(xr) ** 2).sum().backward()  # the ordinary autograd path
    got = grad(loss, argnums=(0, 1))(params, x)
    torch.testing.assert_close(got[0]["weight"], layer.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[0]["bias"], layer.bias.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], xr.grad, rtol=1e-12, atol=1e-12)  # through B
    # per-example gradients: one example at a time by autograd, all at once by vmap(grad)
    per = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        layer.zero_grad()
        (layer(x[i]) ** 2).sum().backward()
        torch.testing.assert_close(per["weight"][i], layer.weight.grad, rtol=1e-12, atol=1e-12)
    # the Jacobian with respect to the input is B, not W
    jac = jacrev(lambda v: functional_call(layer, (params, buffers), (v,)))(x[0, 0])
    torch.testing.assert_close(jac, layer.b_matrix, rtol=0, atol=0)
    assert not torch.allclose(jac, layer.weight)
    out = vmap(lambda v: functional_call(layer, (params, buffers), (v,)))(x)
    torch.testing.assert_close(out, layer(x).detach(), rtol=1e-14, atol=1e-14)


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(FALinear(12, 16), nn.Tanh(), FALinear(16, 5)).double()
    x, target = torch.randn(8, 12, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)

    def grads(m):
        m.zero_grad()
        ((m(x) - target) ** 2).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = grads(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for got, want in zip(grads(compiled), eager):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@requires_cuda
@pytest.mark.parametrize("in_shape,out_features", SHAPES)
def test_cuda_matches_cpu(in_shape, out_features):
    x, w, b, B = make_args(in_shape, out_features, torch.float64)
    g = torch.randn(*in_shape[:-1], out_features, dtype=torch.float64)
    y, grads = fa_grads(x, w, b, B, g)
    yc, grads_c = fa_grads(*(t.cuda() for t in (x, w, b, B)), g.cuda())
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_error_is_like_nn_linear(dtype):
    """Judged as flash-attention does: error vs an fp64 reference, at most 2x plain PyTorch's."""
    x, w, b, B = make_args((256, 512), 384, torch.float64, device="cuda")
    g = torch.randn(256, 384, dtype=torch.float64, device="cuda")
    y64, grads64 = fa_grads(x, w, b, B, g)
    y, grads = fa_grads(*(t.to(dtype) for t in (x, w, b, B)), g.to(dtype))
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
    y_pt = torch.nn.functional.linear(*leaves)
    y_pt.backward(g.to(dtype))
    ref_grads64 = list(grads64)
    err = lambda a, ref: (a.double() - ref).abs().max().item()
    assert err(y, y64) <= 2 * err(y_pt, y64) + 1e-6
    # weight and bias gradients have the same formula as nn.Linear's; compare those
    for got, pt, want in zip(grads[1:], [t.grad for t in leaves[1:]], ref_grads64[1:]):
        assert err(got, want) <= 2 * err(pt, want) + 1e-6
    # grad_input goes through B: compare with the fp64 formula against PyTorch's own mm error
    gx_pt = g.to(dtype) @ B.to(dtype)
    assert err(grads[0], grads64[0]) <= 2 * err(gx_pt, grads64[0]) + 1e-6


@requires_cuda
def test_cuda_autocast_float16():
    model = nn.Sequential(FALinear(64, 128), nn.ReLU(), FALinear(128, 10)).cuda()
    x = torch.randn(32, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert model[0].weight.grad.dtype == torch.float32
