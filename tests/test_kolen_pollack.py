"""Kolen-Pollack (feedback="kolen_pollack"): B is a parameter that receives exactly W's gradient,
so it gets W's updates (plus its own weight decay) and converges towards W."""
import pytest
import torch
from torch import nn

import soap_cuda
from soap_cuda import FAConv2d, FALinear


def _layer(kind, **kw):
    torch.manual_seed(0)
    if kind == "linear":
        return FALinear(6, 4, feedback="kolen_pollack", dtype=torch.float64, **kw), \
            torch.randn(5, 6, dtype=torch.float64)
    return FAConv2d(2, 3, 3, padding=1, feedback="kolen_pollack", dtype=torch.float64, **kw), \
        torch.randn(4, 2, 5, 5, dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_b_receives_exactly_w_gradient_in_its_own_tensor(kind, bias):
    layer, x = _layer(kind, bias=bias)
    assert isinstance(layer.b_matrix, nn.Parameter)
    assert "b_matrix" in dict(layer.named_parameters()) and "b_matrix" in layer.state_dict()
    layer(x).square().sum().backward()
    assert torch.equal(layer.b_matrix.grad, layer.weight.grad)
    # no copy made: the two share their data copy-on-write until either is written
    assert torch._C._is_cow_tensor(layer.b_matrix.grad)
    # separate tensors: an in-place change of one gradient (clipping) leaves the other alone
    want = layer.weight.grad.clone()
    layer.weight.grad.mul_(3)
    assert torch.equal(layer.b_matrix.grad, want)
    layer.b_matrix.grad.add_(1)
    assert torch.equal(layer.weight.grad, 3 * want) and torch.equal(layer.b_matrix.grad, want + 1)
    assert layer.b_matrix.grad.data_ptr() != layer.weight.grad.data_ptr()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_clipping_and_accumulation_treat_the_two_gradients_apart(kind):
    layer, x = _layer(kind)
    layer(x).square().sum().backward()
    g = layer.weight.grad.clone()
    total = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    nn.utils.clip_grad_norm_(layer.parameters(), max_norm=0.5 * total.item())
    # each gradient scaled once (shared memory would have scaled W's and B's twice); the
    # clipping coefficient has clip_grad_norm_'s 1e-6 in its denominator
    torch.testing.assert_close(layer.weight.grad, 0.5 * g, rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.b_matrix.grad, 0.5 * g, rtol=1e-6, atol=0)
    # gradients kept between backwards (zero_grad(set_to_none=False)) accumulate apart too
    layer.zero_grad(set_to_none=False)
    for _ in range(2):
        layer(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, 2 * g, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.b_matrix.grad, 2 * g, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_create_graph_gives_b_a_differentiable_gradient(kind):
    layer, x = _layer(kind)
    x.requires_grad_()
    gw, gb = torch.autograd.grad(layer(x).square().sum(), (layer.weight, layer.b_matrix),
                                 create_graph=True)
    assert torch.equal(gw, gb) and gb.requires_grad
    dx_w, = torch.autograd.grad(gw.sum(), x, retain_graph=True)
    dx_b, = torch.autograd.grad(gb.sum(), x)
    torch.testing.assert_close(dx_b, dx_w, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_b_moves_exactly_as_w_without_weight_decay(kind, momentum):
    layer, x = _layer(kind)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=momentum)
    w0, b0 = layer.weight.detach().clone(), layer.b_matrix.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        layer(x).tanh().sum().backward()
        opt.step()
    dw, db = layer.weight.detach() - w0, layer.b_matrix.detach() - b0
    assert dw.abs().max() > 1e-3
    # B1 - B0 == W1 - W0, up to the rounding of W0 + step and B0 + step (float64)
    torch.testing.assert_close(db, dw, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_decay_shrinks_the_difference_between_b_and_w(kind):
    layer, x = _layer(kind)
    lr, wd = 0.05, 0.1
    opt = torch.optim.SGD(layer.parameters(), lr=lr, weight_decay=wd)
    diff0 = (layer.b_matrix - layer.weight).detach().clone()
    layer(x).tanh().sum().backward()
    opt.step()
    diff1 = (layer.b_matrix - layer.weight).detach()
    torch.testing.assert_close(diff1, (1 - lr * wd) * diff0, rtol=0, atol=1e-14)


def test_b_converges_towards_w():
    torch.manual_seed(1)
    model = nn.Sequential(FALinear(20, 32, feedback="kolen_pollack"), nn.Tanh(),
                          FALinear(32, 5, feedback="kolen_pollack"))
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    start = soap_cuda.metrics.feedback_alignment(model)
    assert all(m["angle_deg"] > 60 for m in start.values())  # random B: near 90 degrees
    for step in range(600):
        i = torch.randint(0, 256, (32,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    end = soap_cuda.metrics.feedback_alignment(model)
    assert all(m["angle_deg"] < 10 for m in end.values()), end


def test_checkpoint_resumes_exactly():
    def make():
        torch.manual_seed(2)
        model = nn.Sequential(FALinear(6, 8, feedback="kolen_pollack"), nn.ReLU(),
                              FALinear(8, 3, feedback="kolen_pollack"))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def steps(model, opt, seeds):
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            opt.zero_grad()
            model(torch.randn(4, 6, generator=g)).square().sum().backward()
            opt.step()

    full, full_opt = make()
    steps(full, full_opt, range(6))
    part, part_opt = make()
    steps(part, part_opt, range(3))
    state = {"model": part.state_dict(), "opt": part_opt.state_dict()}
    resumed, resumed_opt = make()
    resumed.load_state_dict(state["model"])
    resumed_opt.load_state_dict(state["opt"])
    steps(resumed, resumed_opt, range(3, 6))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), name


def test_rule_options_and_conversion():
    with pytest.raises(ValueError, match="has no effect"):
        FALinear(3, 2, feedback="kolen_pollack", sync_every=10)
    model = soap_cuda.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)),
                              feedback="kolen_pollack")
    assert all(isinstance(m.b_matrix, nn.Parameter) for m in (model[0], model[2]))
    assert "feedback='kolen_pollack'" in repr(model[2])
    with soap_cuda.backprop_mode(model):  # the metrics' backprop reference still works
        model(torch.randn(2, 1, 4, 4)).sum().backward()
    assert model[0].b_matrix.grad is None  # under bp the error goes through W, B is not used


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bias", [True, False])
def test_frozen_b_or_frozen_w(kind, bias):
    layer, x = _layer(kind, bias=bias)
    layer.b_matrix.requires_grad_(False)
    layer(x).sum().backward()
    assert layer.b_matrix.grad is None and layer.weight.grad is not None
    layer, x = _layer(kind, bias=bias)
    layer.weight.requires_grad_(False)
    layer(x).sum().backward()
    assert layer.weight.grad is None and layer.b_matrix.grad is not None


def test_opcheck_with_a_learned_b():
    f32 = dict(dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.soap_cuda.fa_linear.default,
                          (torch.randn(5, 7, **f32), torch.randn(3, 7, **f32),
                           torch.randn(3, **f32), torch.randn(3, 7, **f32)))
    torch.library.opcheck(torch.ops.soap_cuda.fa_conv.default,
                          (torch.randn(2, 4, 6, 5, **f32), torch.randn(6, 2, 3, 3, **f32),
                           torch.randn(6, **f32), torch.randn(6, 2, 3, 3, **f32),
                           [1, 2], [1, 0], [1, 1], 2))
