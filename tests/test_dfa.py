"""Direct feedback alignment: weight gradients against a hand computation from e, the layers'
b_matrix and the activations (float64, linear and conv), the dfa_project op against its
reference, and the model-level plumbing (errors, accumulation, reuse, compile, autocast)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda
from conftest import devices
from soap_cuda.reference.dfa_project import dfa_project as ref_project

project = torch.ops.soap_cuda.dfa_project.default
TIGHT = dict(rtol=1e-11, atol=1e-12)


def _mlp(dims, act=nn.Tanh, dtype=torch.float64, device="cpu"):
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            mods.append(act())
        mods.append(nn.Linear(a, b, dtype=dtype, device=device))
    return nn.Sequential(*mods)


# --- the op -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_dfa_project_matches_reference(device, lead):
    error = torch.randn(*lead, 4, dtype=torch.float64, device=device)
    bs = [torch.randn(4, k, dtype=torch.float64, device=device) for k in (3, 1, 7)]
    bs[1] = torch.randn(1, 4, dtype=torch.float64, device=device).t()  # non-contiguous
    got = project(error, bs)
    rows = math.prod(lead)
    assert got.shape == (rows, 11)
    torch.testing.assert_close(got, ref_project(error, bs), **TIGHT)
    torch.testing.assert_close(got, error.reshape(rows, 4) @ torch.cat(bs, 1), **TIGHT)


def test_dfa_project_opcheck():
    error = torch.randn(6, 3)
    torch.library.opcheck(project, (error, [torch.randn(3, 5), torch.randn(3, 2)]))


@pytest.mark.parametrize("args,pattern", [
    (lambda: (torch.randn(3, 4).int(), [torch.randn(4, 2)]), r"'error' must be a floating"),
    (lambda: (torch.randn(3, 4), []), r"'b_matrices' must not be empty"),
    (lambda: (torch.randn(3, 4), [torch.randn(4, 2), torch.randn(5, 2)]),
     r"'b_matrices\[1\]' must have shape \(4, k\)"),
    (lambda: (torch.randn(3, 4), [torch.randn(4, 2).double()]),
     r"'b_matrices\[0\]' must have the dtype of 'error'"),
])
def test_dfa_project_rejects_bad_input(args, pattern):
    with pytest.raises(RuntimeError, match=r"soap_cuda::dfa_project: argument " + pattern):
        project(*args())


# --- gradients against a hand computation --------------------------------------------------------

@pytest.mark.parametrize("device", devices())
def test_mlp_weight_gradients_are_the_dfa_formula(device):
    torch.manual_seed(0)
    dfa = soap_cuda.convert(_mlp((7, 6, 5, 4, 3), device=device), feedback="dfa")
    layers = [dfa[0], dfa[2], dfa[4], dfa[6]]
    x = torch.randn(9, 7, dtype=torch.float64, device=device)
    target = torch.randn(9, 3, dtype=torch.float64, device=device)
    F.mse_loss(dfa(x), target, reduction="sum").backward()

    hs = [x]  # each layer's input, by hand
    for layer in layers[:-1]:
        hs.append(torch.tanh(hs[-1] @ layer.weight.T + layer.bias))
    out = hs[-1] @ layers[-1].weight.T + layers[-1].bias
    e = 2 * (out - target)
    for i, layer in enumerate(layers):
        if i == len(layers) - 1:
            delta = e  # the output layer receives e itself
        else:
            delta = (e @ layers[i + 1].b_matrix) * (1 - hs[i + 1] ** 2)
        torch.testing.assert_close(layer.weight.grad, delta.T @ hs[i], **TIGHT)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), **TIGHT)
        assert layer.b_matrix.shape == (3, layer.in_features)


def _backprop_and_dfa(seed, dims, batch):
    """An MLP with its backprop gradients, its DFA twin, and the batch they came from."""
    torch.manual_seed(seed)
    base = _mlp(dims)
    dfa = soap_cuda.convert(base, feedback="dfa")
    x, y = torch.randn(batch, dims[0], dtype=torch.float64), torch.randint(0, dims[-1], (batch,))
    F.cross_entropy(base(x), y).backward()
    return base, dfa, x, y


def test_output_layer_gradient_equals_backprop():
    base, dfa, x, y = _backprop_and_dfa(1, (5, 8, 4), 6)
    F.cross_entropy(dfa(x), y).backward()
    torch.testing.assert_close(dfa[2].weight.grad, base[2].weight.grad, **TIGHT)
    torch.testing.assert_close(dfa[2].bias.grad, base[2].bias.grad, **TIGHT)
    assert not torch.allclose(dfa[0].weight.grad, base[0].weight.grad)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, dtype=torch.float64)
        self.fc = nn.Linear(4 * 3 * 3, 5, dtype=torch.float64)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return self.fc(h.flatten(1))


def test_conv_weight_gradients_are_the_dfa_formula():
    torch.manual_seed(2)
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    dfa = soap_cuda.convert(_ConvNet(), feedback="dfa", example_input=x)
    assert dfa.conv1.b_matrix.shape == (5, 2 * 7 * 7)
    assert dfa.conv2.b_matrix.shape == (5, 3 * 7 * 7)
    assert dfa.fc.b_matrix.shape == (5, 36)
    target = torch.randn(3, 5, dtype=torch.float64)
    F.mse_loss(dfa(x), target, reduction="sum").backward()

    h1 = torch.tanh(F.conv2d(x, dfa.conv1.weight, dfa.conv1.bias, padding=1))
    h2 = torch.tanh(F.conv2d(h1, dfa.conv2.weight, dfa.conv2.bias, stride=2))
    e = 2 * (h2.flatten(1) @ dfa.fc.weight.T + dfa.fc.bias - target)
    delta2 = (e @ dfa.fc.b_matrix).view_as(h2) * (1 - h2 ** 2)
    delta1 = (e @ dfa.conv2.b_matrix).view_as(h1) * (1 - h1 ** 2)
    grad_w2 = torch.nn.grad.conv2d_weight(h1, dfa.conv2.weight.shape, delta2, stride=2)
    grad_w1 = torch.nn.grad.conv2d_weight(x, dfa.conv1.weight.shape, delta1, padding=1)
    torch.testing.assert_close(dfa.fc.weight.grad, e.T @ h2.flatten(1), **TIGHT)
    torch.testing.assert_close(dfa.conv2.weight.grad, grad_w2, **TIGHT)
    torch.testing.assert_close(dfa.conv2.bias.grad, delta2.sum((0, 2, 3)), **TIGHT)
    torch.testing.assert_close(dfa.conv1.weight.grad, grad_w1, **TIGHT)


def test_backprop_mode_gives_backprop_gradients():
    base, dfa, x, y = _backprop_and_dfa(3, (5, 6, 3), 4)
    with soap_cuda.backprop_mode(dfa):
        F.cross_entropy(dfa(x), y).backward()
    for a, b in zip(base.parameters(), dfa.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **TIGHT)


# --- plumbing ------------------------------------------------------------------------------------

def test_several_forwards_before_one_backward_accumulate():
    torch.manual_seed(4)
    dfa = soap_cuda.convert(_mlp((5, 6, 3)), feedback="dfa")
    xs = [torch.randn(4, 5, dtype=torch.float64) for _ in range(2)]
    (dfa(xs[0]).sum() + dfa(xs[1]).square().sum()).backward()
    together = [p.grad.clone() for p in dfa.parameters()]
    dfa.zero_grad()
    dfa(xs[0]).sum().backward()
    dfa(xs[1]).square().sum().backward()
    for a, p in zip(together, dfa.parameters()):
        torch.testing.assert_close(a, p.grad, **TIGHT)


def test_a_layer_used_twice_gets_both_projections():
    torch.manual_seed(5)
    hidden = soap_cuda.FALinear(4, 4, feedback="dfa", dfa_outputs=2, dtype=torch.float64)
    head = soap_cuda.FALinear(4, 2, feedback="dfa", dfa_outputs=2, dtype=torch.float64)
    model = soap_cuda.enable_dfa(nn.Sequential(hidden, nn.Tanh(), hidden, nn.Tanh(), head))
    x = torch.randn(3, 4, dtype=torch.float64)
    out = model(x)
    out.sum().backward()
    h1 = torch.tanh(x @ hidden.weight.T + hidden.bias)
    h2 = torch.tanh(h1 @ hidden.weight.T + hidden.bias)
    e = torch.ones(3, 2, dtype=torch.float64)
    d2 = (e @ head.b_matrix) * (1 - h2 ** 2)      # second use: its output feeds the head
    d1 = (e @ hidden.b_matrix) * (1 - h1 ** 2)    # first use: its output is the second's input
    torch.testing.assert_close(hidden.weight.grad, d2.T @ h1 + d1.T @ x, **TIGHT)


def test_clear_errors():
    with pytest.raises(ValueError, match="feedback='dfa' needs dfa_outputs"):
        soap_cuda.FALinear(3, 2, feedback="dfa")
    with pytest.raises(ValueError, match="dfa_outputs and dfa_input_shape are for feedback='dfa'"):
        soap_cuda.FALinear(3, 2, dfa_outputs=2)
    with pytest.raises(ValueError, match="needs dfa_input_shape"):
        soap_cuda.FAConv2d(1, 2, 3, feedback="dfa", dfa_outputs=4)
    with pytest.raises(ValueError, match="needs example_input="):
        soap_cuda.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)),
                          feedback="dfa")
    loose = soap_cuda.FALinear(3, 2, feedback="dfa", dfa_outputs=2)
    with pytest.raises(RuntimeError, match="ran outside a model set up for direct feedback"):
        loose(torch.randn(1, 3))
    with torch.no_grad():
        loose(torch.randn(1, 3))  # evaluation needs no tape
    softmaxed = soap_cuda.convert(nn.Sequential(nn.Linear(3, 2), nn.Softmax(-1)), feedback="dfa")
    with pytest.raises(RuntimeError, match="needs the output of Sequential to be the output of "
                                           "its last DFA layer"):
        softmaxed(torch.randn(2, 3))


def test_convert_is_reproducible_and_state_dict_round_trips():
    base = _mlp((5, 6, 3))
    a = soap_cuda.convert(base, feedback="dfa", generator=torch.Generator().manual_seed(7))
    b = soap_cuda.convert(base, feedback="dfa", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0].b_matrix, b[0].b_matrix)
    std = a[0].b_matrix.std().item()
    assert 0.5 < std / math.sqrt(2 / (3 + 5)) < 1.5  # xavier-normal over (out, in)
    c = soap_cuda.convert(base, feedback="dfa")
    c.load_state_dict(a.state_dict())
    assert torch.equal(c[2].b_matrix, a[2].b_matrix)


def test_compile_matches_eager():
    torch.manual_seed(8)
    model = soap_cuda.convert(_mlp((5, 6, 3), dtype=torch.float32), feedback="dfa")
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    F.cross_entropy(model(x), y).backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # no graph break
    F.cross_entropy(compiled(x), y).backward()
    for a, p in zip(eager, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_bf16_autocast_follows_float32():
    torch.manual_seed(9)
    model = soap_cuda.convert(_mlp((16, 32, 32, 4), dtype=torch.float32), feedback="dfa")
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    F.cross_entropy(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    for a, p in zip(full, model.parameters()):
        assert p.grad.dtype == torch.float32
        assert (p.grad - a).norm() <= 0.05 * a.norm()


def test_metrics_report_dfa_layers():
    torch.manual_seed(10)
    model = soap_cuda.convert(_mlp((5, 6, 3)), feedback="dfa")
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    report = soap_cuda.metrics.error_signal_alignment(model, F.cross_entropy, x, y)
    assert report["2"]["weight_grad_angle_deg"] == pytest.approx(0.0, abs=1e-6)  # output layer
    assert 0.0 < report["0"]["weight_grad_angle_deg"] < 180.0
    assert all(math.isnan(v["angle_deg"])
               for v in soap_cuda.metrics.feedback_alignment(model).values())
