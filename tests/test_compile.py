"""torch.compile: an FA MLP compiles with fullgraph=True (no graph breaks) and gives eager's
gradients; the example-counted sync schedule still runs on time around a compiled model."""
import pytest
import torch
from torch import nn

import soap_cuda
from soap_cuda import FALinear


def grads(model, x, target):
    model.zero_grad()
    nn.functional.mse_loss(model(x), target).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("rule", ["fa", "bp", "rescaled_sign"])
def test_inductor_fullgraph_matches_eager(rule):
    torch.manual_seed(0)
    model = nn.Sequential(FALinear(12, 32, feedback=rule), nn.ReLU(), FALinear(32, 6, feedback=rule))
    soap_cuda.sync_feedback(model)
    x, target = torch.randn(16, 12), torch.randn(16, 6)
    eager = grads(model, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for got, want in zip(grads(compiled, x, target), eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0


def test_fullgraph_under_autocast_and_inside_torch_func_grad():
    torch.manual_seed(0)
    model = nn.Sequential(FALinear(12, 32), nn.ReLU(), FALinear(32, 6))
    x, target = torch.randn(16, 12), torch.randn(16, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager_out = model(x)
        eager = grads(model, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x).dtype == eager_out.dtype == torch.bfloat16
        for got, want in zip(grads(compiled, x, target), eager):
            torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)
    # torch.func.grad of a compiled function: the transform-aware path traces too
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p):
        out = torch.func.functional_call(model, (p, buffers), (x,))
        return nn.functional.mse_loss(out, target)

    want = torch.func.grad(loss)(params)
    torch._dynamo.reset()
    got = torch.compile(torch.func.grad(loss), fullgraph=True, backend="aot_eager")(params)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    eager_grads = grads(model, x, target)
    torch.testing.assert_close(want["0.weight"], eager_grads[0], rtol=1e-5, atol=1e-6)
    with soap_cuda.feedback.backprop_mode(model):  # a dropped FA backward would give this
        backprop = grads(model, x, target)
    assert not torch.allclose(got["0.weight"], backprop[0], rtol=1e-2, atol=1e-3)


def test_schedule_runs_eagerly_around_a_compiled_model():
    torch.manual_seed(0)
    model = nn.Sequential(FALinear(8, 8, feedback="sign", sync_every=20), nn.Tanh(), FALinear(8, 2))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    for n in (8, 8, 8, 8, 8):
        compiled(torch.randn(n, 8)).sum().backward()
    assert model[0].examples_seen == 40 and model[0].sync_count == 2
    assert torch.equal(model[0].b_matrix, torch.sign(model[0].weight.detach()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_every_op_and_dtype_on_cpu(dtype):
    x = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 7, dtype=dtype, requires_grad=True)
    b = torch.randn(3, dtype=dtype, requires_grad=True)
    B = torch.randn(3, 7, dtype=dtype)
    torch.library.opcheck(torch.ops.soap_cuda.fa_linear.default, (x, w, b, B),
                          atol=1e-2 if dtype == torch.bfloat16 else None,
                          rtol=1e-2 if dtype == torch.bfloat16 else None)
    torch.library.opcheck(torch.ops.soap_cuda.fa_linear_backward.default,
                          (torch.randn(5, 3, dtype=dtype), x.detach(), B, [True, True, True]))
    torch.library.opcheck(torch.ops.soap_cuda.feedback_sync_.default,
                          ([w.detach()], [torch.empty_like(B)], [B], torch.ones(1, dtype=torch.float64)))


def test_compiled_autograd_runs_the_fa_nodes():
    """Compiled autograd captures the backward of FA conv, FA linear and the stacked op (the
    native nodes hand it their formula as a functional op) and gives eager's gradients,
    Kolen-Pollack's B included."""
    from torch._dynamo import compiled_autograd
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = nn.Sequential(soap_cuda.FAConv2d(2, 3, 3, padding=1, feedback="kolen_pollack"),
                          nn.Tanh(), nn.Flatten(), FALinear(3 * 16, 4))
    x = torch.randn(2, 2, 4, 4)
    ws = torch.randn(2, 3, 5, requires_grad=True)
    xs, bs = torch.randn(2, 6, 5), torch.randn(2, 3, 5)
    params = (*model.parameters(), ws)

    def loss():
        stacked = torch.ops.soap_cuda.fa_linear_stacked(xs, ws, None, bs)
        return model(x).square().sum() + stacked.square().sum()

    loss().backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    torch._dynamo.reset()
    captures = counters["compiled_autograd"]["captures"]
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        loss().backward()
    assert counters["compiled_autograd"]["captures"] == captures + 1
    for p, g in zip(params, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
