"""fa_linear_stacked: M FA linear layers as one batched GEMM, each slice held to fa_linear on
that model's tensors and to the reference (float64), gradients included."""
import pytest
import torch

from conftest import devices
from soap_cuda.reference.fa_linear_stacked import fa_linear_stacked as ref_forward
from soap_cuda.reference.fa_linear_stacked import fa_linear_stacked_backward as ref_backward

op = torch.ops.soap_cuda.fa_linear_stacked.default
op_backward = torch.ops.soap_cuda.fa_linear_stacked_backward.default
TIGHT = dict(rtol=1e-12, atol=1e-12)


def _make(models, n, cin, cout, device, bias=True, layout="contiguous"):
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(models, n, cin, **f64)
    if layout == "noncontiguous":
        x = torch.randn(models, n, 2 * cin, **f64)[..., ::2]
    w = torch.randn(models, cout, cin, **f64)
    b = torch.randn(models, cout, **f64) if bias else None
    B = torch.randn(models, cout, cin, **f64)
    return x, w, b, B


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 2), (4, 17, 13, 9)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_each_slice_is_fa_linear(device, shape, bias, layout):
    x, w, b, B = _make(*shape, device, bias, layout)
    x.requires_grad_(), w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    y = op(x, w, b, B)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(y, ref_forward(x, w, b, B), **TIGHT)
    for m in range(shape[0]):
        xm = x[m].detach().requires_grad_()
        wm = w[m].detach().requires_grad_()
        bm = b[m].detach().requires_grad_() if b is not None else None
        ym = torch.ops.soap_cuda.fa_linear(xm, wm, bm, B[m])
        ym.backward(g[m])
        torch.testing.assert_close(y[m], ym, **TIGHT)
        torch.testing.assert_close(x.grad[m], xm.grad, **TIGHT)  # g @ B, not g @ W
        torch.testing.assert_close(w.grad[m], wm.grad, **TIGHT)
        if b is not None:
            torch.testing.assert_close(b.grad[m], bm.grad, **TIGHT)


@pytest.mark.parametrize("device", devices())
def test_backward_op_masks_and_reference(device):
    x, w, b, B = _make(3, 4, 5, 2, device)
    g = torch.randn(3, 4, 2, dtype=torch.float64, device=device)
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        got = op_backward(g, x, B, mask)
        want = ref_backward(g, x, B, mask)
        for a, e, asked in zip(got, want, mask):
            assert (a is None) == (not asked)
            if asked:
                torch.testing.assert_close(a, e, **TIGHT)


def test_opcheck():
    x, w, b, B = _make(2, 3, 4, 5, "cpu")
    torch.library.opcheck(op, (x, w.requires_grad_(), b.requires_grad_(), B))
    torch.library.opcheck(op, (x, w, b, B.clone().requires_grad_()))  # Kolen-Pollack's B
    torch.library.opcheck(op_backward, (torch.randn(2, 3, 5, dtype=torch.float64), x, B,
                                        [True, True, True]))


@pytest.mark.parametrize("case,pattern", [
    (lambda x, w, b, B: (x[0], w, b, B), r"argument 'input' must be 3-D"),
    (lambda x, w, b, B: (x, w[:1], b, B), r"argument 'weight' must have shape \(2, out, 4\)"),
    (lambda x, w, b, B: (x, w, b, B[:, :, :3]), r"argument 'b_matrix' must have the shape"),
    (lambda x, w, b, B: (x, w, b[:, :2], B), r"argument 'bias' must have shape \[2, 5\]"),
    (lambda x, w, b, B: (x, w.float(), b, B), r"argument 'weight' must have the dtype"),
    (lambda x, w, b, B: (x.int(), w, b, B), r"argument 'input' must be a floating-point"),
])
def test_bad_input_is_rejected(case, pattern):
    args = case(*_make(2, 3, 4, 5, "cpu"))
    with pytest.raises(RuntimeError, match=r"soap_cuda::fa_linear_stacked: " + pattern):
        op(*args)


def test_autograd_node_is_native_where_the_library_is():
    import soap_cuda
    x, w, b, B = _make(2, 3, 4, 5, "cpu")
    y = op(x, w.requires_grad_(), b, B)
    name = y.grad_fn.name()
    assert name == ("SoapCudaFALinearStackedBackward" if soap_cuda.backend() != "python"
                    else name)
    assert op(x, w.detach(), b, B).grad_fn is None  # nothing wants a gradient: no node


def test_double_backward_matches_each_models_fa_linear():
    """create_graph=True through the stacked op gives what each model's fa_linear gives."""
    x, w, b, B = _make(3, 4, 5, 2, "cpu")
    x.requires_grad_(), w.requires_grad_()
    gx, gw = torch.autograd.grad(op(x, w, b, B).square().sum(), (x, w), create_graph=True)
    dx, dw = torch.autograd.grad(gx.square().sum() + gw.square().sum(), (x, w))
    for m in range(3):
        xm, wm = x[m].detach().requires_grad_(), w[m].detach().requires_grad_()
        y = torch.ops.soap_cuda.fa_linear(xm, wm, b[m], B[m])
        gxm, gwm = torch.autograd.grad(y.square().sum(), (xm, wm), create_graph=True)
        dxm, dwm = torch.autograd.grad(gxm.square().sum() + gwm.square().sum(), (xm, wm))
        torch.testing.assert_close(dx[m], dxm, **TIGHT)
        torch.testing.assert_close(dw[m], dwm, **TIGHT)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("weight_grad", [True, False])
def test_a_b_that_requires_grad_gets_ws_gradient(device, weight_grad):
    """Kolen-Pollack through the stacked op, by fa_linear's rule: B's gradient is W's, a tensor
    of its own (an in-place change of one leaves the other), and none when B is fixed."""
    x, w, b, B = _make(3, 4, 5, 2, device)
    w.requires_grad_(weight_grad)
    B.requires_grad_()
    x.requires_grad_()
    y = op(x, w, b, B)
    g = torch.randn_like(y)
    y.backward(g)
    want = ref_backward(g, x.detach(), B.detach(), [False, True, False])[1]
    torch.testing.assert_close(B.grad, want, **TIGHT)
    torch.testing.assert_close(x.grad, ref_backward(g, x.detach(), B.detach(),
                                                    [True, False, False])[0], **TIGHT)
    if weight_grad:
        assert torch.equal(w.grad, B.grad)
        B.grad.add_(1)
        torch.testing.assert_close(w.grad, want, **TIGHT)
    else:
        assert w.grad is None
    fixed = B.detach().clone()
    op(x, w, b, fixed).sum().backward()
    assert fixed.grad is None
