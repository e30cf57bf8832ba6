"""fa_conv and FAConv1d/2d/3d: the op held against its reference (torch.nn.grad with B) in
float64, the layers against nn.Conv, sync/metrics/convert on conv layers, and bad input."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn import grad as nn_grad
from torch.utils._python_dispatch import TorchDispatchMode

import soap_cuda
from soap_cuda import FAConv1d, FAConv2d, FAConv3d
from soap_cuda.reference.fa_conv import fa_conv as ref_conv
from soap_cuda.reference.fa_conv import fa_conv_backward as ref_backward

from conftest import devices, requires_cuda

op = torch.ops.soap_cuda.fa_conv.default
op_backward = torch.ops.soap_cuda.fa_conv_backward.default
TIGHT = dict(rtol=1e-10, atol=1e-10)

# (spatial dims, batch, in, out, kernel, stride, padding, dilation, groups, input size)
CASES = [
    (1, 3, 4, 6, (3,), (1,), (1,), (1,), 1, (17,)),
    (1, 2, 6, 4, (4,), (2,), (0,), (2,), 2, (19,)),
    (2, 2, 3, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, (9, 8)),
    (2, 3, 4, 6, (3, 2), (2, 1), (0, 1), (1, 2), 2, (11, 7)),
    (2, 1, 6, 6, (5, 5), (3, 3), (2, 2), (1, 1), 6, (13, 13)),   # depthwise
    (2, 2, 4, 8, (1, 1), (1, 1), (0, 0), (1, 1), 4, (5, 3)),     # pointwise, grouped
    (3, 2, 2, 4, (3, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 2), 2, (5, 6, 7)),
]


def _make(case, dtype=torch.float64, device="cpu", layout="contiguous"):
    n, batch, cin, cout, k, stride, padding, dilation, groups, size = case
    x = torch.randn(batch, cin, *size, dtype=dtype, device=device)
    if layout == "noncontiguous":  # every other element of a twice-as-wide tensor
        x = torch.randn(batch, cin, *size[:-1], 2 * size[-1], dtype=dtype,
                        device=device)[..., ::2]
    if layout == "channels_last" and n in (2, 3):
        fmt = torch.channels_last if n == 2 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    w = torch.randn(cout, cin // groups, *k, dtype=dtype, device=device)
    b = torch.randn(cout, dtype=dtype, device=device)
    B = torch.randn(cout, cin // groups, *k, dtype=dtype, device=device)
    return x, w, b, B, list(stride), list(padding), list(dilation), groups


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-k{c[4]}-s{c[5]}-g{c[8]}")
def test_forward_and_backward_match_the_reference(case, layout, device):
    x, w, b, B, stride, padding, dilation, groups = _make(case, device=device, layout=layout)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = op(x, w, b, B, stride, padding, dilation, groups)
    torch.testing.assert_close(y, ref_conv(x.detach(), w.detach(), b.detach(), B, stride,
                                           padding, dilation, groups), **TIGHT)
    g = torch.randn_like(y)
    y.backward(g)
    # the hand formula: grad_input through B (torch.nn.grad), weight/bias gradients as usual
    n = w.dim() - 2
    conv_input = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input, 3: nn_grad.conv3d_input}[n]
    conv_weight = {1: nn_grad.conv1d_weight, 2: nn_grad.conv2d_weight,
                   3: nn_grad.conv3d_weight}[n]
    torch.testing.assert_close(x.grad, conv_input(x.shape, B, g, stride, padding, dilation,
                                                  groups), **TIGHT)
    torch.testing.assert_close(w.grad, conv_weight(x.detach(), w.shape, g, stride, padding,
                                                   dilation, groups), **TIGHT)
    torch.testing.assert_close(b.grad, g.sum([0] + list(range(2, g.dim()))), **TIGHT)


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, True), (False, False, True),
                                  (False, False, False)])
def test_backward_computes_only_what_is_asked(mask):
    x, w, b, B, stride, padding, dilation, groups = _make(CASES[2])
    g = torch.randn_like(op(x, w, b, B, stride, padding, dilation, groups))
    got = op_backward(g, x, B, stride, padding, dilation, groups, list(mask))
    want = ref_backward(g, x, B, stride, padding, dilation, groups, list(mask))
    for asked, a, e in zip(mask, got, want):
        assert (a is not None) == asked and (e is not None) == asked
        if asked:
            torch.testing.assert_close(a, e, **TIGHT)


class _RecordBackwardMasks(TorchDispatchMode):
    """Sees every op below autograd, the native C++ autograd's calls included."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.soap_cuda.fa_conv_backward.default:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


def test_first_layer_computes_no_input_gradient():
    layer = FAConv2d(3, 4, 3, dtype=torch.float64)
    with _RecordBackwardMasks() as record:
        layer(torch.randn(2, 3, 6, 6, dtype=torch.float64)).sum().backward()
    assert record.masks == [[False, True, True]]
    frozen = FAConv2d(3, 4, 3, bias=False, dtype=torch.float64).requires_grad_(False)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    with _RecordBackwardMasks() as record:
        frozen(x).sum().backward()
    assert record.masks == [[True, False, False]] and x.grad is not None
    with torch.no_grad():  # evaluation: no graph at all
        assert layer(x).grad_fn is None


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: f"{c[0]}d-g{c[8]}")
def test_opcheck(case):
    x, w, b, B, stride, padding, dilation, groups = _make(case, dtype=torch.float32)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(op, (x, w, b, B, stride, padding, dilation, groups))
    g = torch.randn_like(op(x, w, b, B, stride, padding, dilation, groups))
    torch.library.opcheck(op_backward, (g, x.detach(), B, stride, padding, dilation, groups,
                                        [True, True, True]))


def test_double_backward_is_exact():
    x, w, b, B, stride, padding, dilation, groups = _make(CASES[3])
    x.requires_grad_(), w.requires_grad_()
    y = op(x, w, b, w.detach(), stride, padding, dilation, groups)  # B = W: backprop
    gx, gw = torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)
    penalty = gx.square().sum() + gw.square().sum()
    dx, dw = torch.autograd.grad(penalty, (x, w))
    # the same through aten's own convolution (B = W, so the FA rule is backprop)
    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    y2 = torch.ops.aten.convolution(x2, w2, b, stride, padding, dilation, False,
                                    [0] * len(stride), groups)
    gx2, gw2 = torch.autograd.grad(y2.square().sum(), (x2, w2), create_graph=True)
    dx2, _ = torch.autograd.grad(gx2.square().sum() + gw2.square().sum(), (x2, w2))
    torch.testing.assert_close(dx, dx2, **TIGHT)
    assert dw is not None


# --- the layers -------------------------------------------------------------------------------

LAYERS = [(nn.Conv1d, FAConv1d, (8,)), (nn.Conv2d, FAConv2d, (7, 6)),
          (nn.Conv3d, FAConv3d, (5, 4, 6))]
GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, dilation=2, padding=2, groups=2),
    dict(kernel_size=2, padding="same"),               # even kernel: asymmetric padding
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid", bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=2, padding_mode="replicate"),
    dict(kernel_size=3, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in
                                                                     g.items()))
@pytest.mark.parametrize("torch_cls,fa_cls,size", LAYERS, ids=lambda v: getattr(v, "__name__",
                                                                                 None))
def test_feedback_bp_gives_exactly_nn_conv_gradients(torch_cls, fa_cls, size, geometry):
    torch.manual_seed(0)
    conv = torch_cls(4, 6, dtype=torch.float64, **geometry)
    fa = fa_cls.from_conv(conv, feedback="bp")
    for unbatched in (False, True):
        shape = (4, *size) if unbatched else (3, 4, *size)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        y, y2 = conv(x), fa(x2)
        assert torch.equal(y, y2)
        g = torch.randn_like(y)
        y.backward(g)
        y2.backward(g)
        torch.testing.assert_close(x2.grad, x.grad, **TIGHT)
        torch.testing.assert_close(fa.weight.grad, conv.weight.grad, **TIGHT)
        if conv.bias is not None:
            torch.testing.assert_close(fa.bias.grad, conv.bias.grad, **TIGHT)
        conv.zero_grad(), fa.zero_grad()


def test_fa_layer_routes_the_error_through_b():
    torch.manual_seed(1)
    layer = FAConv2d(3, 5, 3, stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    want = nn_grad.conv2d_input(x.shape, layer.b_matrix, g, 2, 1)
    torch.testing.assert_close(x.grad, want, **TIGHT)
    assert not torch.allclose(x.grad, nn_grad.conv2d_input(x.shape, layer.weight.detach(), g,
                                                           2, 1))


def test_module_is_a_swap_in_for_nn_conv2d():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 8, 5, stride=2, bias=True)
    torch.manual_seed(3)
    fa = FAConv2d(3, 8, 5, stride=2, bias=True)
    # nn.Conv2d's own initialisation of W and the bias (drawn first), then B
    assert torch.equal(fa.weight, conv.weight) and torch.equal(fa.bias, conv.bias)
    assert set(dict(fa.named_parameters())) == {"weight", "bias"}
    assert fa.b_matrix.shape == fa.weight.shape
    state = fa.state_dict()
    assert {"weight", "bias", "b_matrix"} <= set(state)
    fresh = FAConv2d(3, 8, 5, stride=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.b_matrix, fa.b_matrix)
    assert "FAConv2d(3, 8, kernel_size=(5, 5), stride=(2, 2))" == repr(fa)
    rule = FAConv2d(3, 8, 5, feedback="sign", sync_every=100)
    assert "feedback='sign', sync_every=100" in repr(rule)
    b0_std = fa.b_matrix.std().item()
    assert 0.5 < b0_std / (2.0 / (3 * 25 + 8 * 25)) ** 0.5 < 1.5  # xavier-normal over the fans


@pytest.mark.parametrize("change", [dict(padding=(2, 1)), dict(stride=(2, 3)),
                                    dict(dilation=(2, 2)), dict(padding_mode="reflect")],
                         ids=lambda c: next(iter(c)))
def test_geometry_set_after_construction_takes_effect_as_in_nn_conv(change):
    """The op's geometry is computed once per module, and again after any of its attributes
    is set: a layer whose padding, stride, ... change behaves as nn.Conv2d does."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
    fa = FAConv2d.from_conv(conv, feedback="bp")
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(fa(x), conv(x), **TIGHT)
    for layer in (conv, fa):
        for name, value in change.items():
            setattr(layer, name, value)
        if "padding_mode" in change:  # what nn.Conv derives from the padding at construction
            layer._reversed_padding_repeated_twice = [1, 1, 1, 1]
    xs = (x.clone().requires_grad_(), x.clone().requires_grad_())
    y_conv, y_fa = conv(xs[0]), fa(xs[1])
    torch.testing.assert_close(y_fa, y_conv, **TIGHT)
    g = torch.randn_like(y_conv)
    y_conv.backward(g)
    y_fa.backward(g)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, **TIGHT)
    torch.testing.assert_close(fa.weight.grad, conv.weight.grad, **TIGHT)


def test_unbatched_input_and_a_copied_layer():
    import copy
    import pickle
    torch.manual_seed(6)
    fa = FAConv2d(2, 3, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    want = fa(x.unsqueeze(0)).squeeze(0)
    torch.testing.assert_close(fa(x), want, rtol=0, atol=0)
    for twin in (copy.deepcopy(fa), pickle.loads(pickle.dumps(fa))):
        torch.testing.assert_close(twin(x), want, rtol=0, atol=0)


def test_conv_node_is_autograd_s_own_kind_of_node():
    """The lean C++ node (native) and the fallback's node behave as ATen's: a second backward
    through freed buffers, and an in-place edit of a saved input, raise autograd's errors."""
    layer = FAConv2d(2, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward(retain_graph=True)
    y.sum().backward()  # retained: a second backward works
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    x2 = torch.randn(2, 2, 5, 5, dtype=torch.float64).requires_grad_()
    x3 = x2 * 1.0
    y3 = layer(x3)
    with torch.no_grad():
        x3.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y3.sum().backward()
    # torch.autograd.grad for some inputs: only those are computed
    y4 = layer(x)
    gx, = torch.autograd.grad(y4.sum(), x)
    assert layer.weight.grad is not None and gx.shape == x.shape


@pytest.mark.parametrize("feedback", ["sign", "rescaled_sign", "scaled_sign", "random_sign"])
def test_sync_rules_and_exact_resume_on_conv_layers(feedback):
    torch.manual_seed(4)
    model = nn.Sequential(FAConv2d(2, 4, 3, feedback=feedback, sync_every=6),
                          nn.ReLU(), nn.Flatten(), soap_cuda.FALinear(4 * 4 * 4, 3,
                                                                       feedback=feedback,
                                                                       sync_every=6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        model(torch.randn(4, 2, 6, 6)).square().mean().backward()

    step()
    opt.step()
    extra = model[0].get_extra_state()
    step()  # crosses 6 examples: both layers sync from the current W, before the backward
    conv = model[0]
    assert conv.sync_count == 1 and model[3].sync_count == 1
    w = conv.weight.detach()
    if feedback == "sign":
        assert torch.equal(conv.b_matrix, torch.sign(w))
    if feedback == "rescaled_sign":
        assert torch.equal(conv.b_matrix, conv.b_init.abs() * torch.sign(w))
    assert torch.equal(torch.sign(conv.b_matrix), torch.sign(w))
    # resume: the saved state replays to the same B
    again = nn.Sequential(FAConv2d(2, 4, 3, feedback=feedback, sync_every=6), nn.ReLU(),
                          nn.Flatten(), soap_cuda.FALinear(64, 3, feedback=feedback,
                                                           sync_every=6))
    again.load_state_dict(model.state_dict())
    assert again[0].get_extra_state() == conv.get_extra_state() != extra
    assert torch.equal(again[0].b_matrix, conv.b_matrix)


def test_one_sync_call_for_linear_and_conv_layers(monkeypatch):
    model = nn.Sequential(FAConv2d(2, 4, 3, feedback="sign"), nn.Flatten(),
                          soap_cuda.FALinear(16, 3, feedback="sign"),
                          FAConv1d(1, 2, 2, feedback="rescaled_sign"))
    calls = []
    real = torch.ops.soap_cuda.feedback_sync_
    monkeypatch.setattr(torch.ops.soap_cuda, "feedback_sync_",
                        lambda *a: (calls.append(len(a[0])), real(*a))[1])
    assert soap_cuda.sync_feedback(model) == 3
    assert calls == [3]
    for layer in (model[0], model[2]):
        assert torch.equal(layer.b_matrix, torch.sign(layer.weight.detach()))


def test_channels_last_layers_sync():
    layer = FAConv2d(3, 8, 3, feedback="rescaled_sign").to(memory_format=torch.channels_last)
    assert not layer.b_matrix.is_contiguous()
    soap_cuda.sync_feedback(layer)
    assert torch.equal(layer.b_matrix, layer.b_init.abs() * torch.sign(layer.weight.detach()))


def test_metrics_report_conv_layers():
    torch.manual_seed(5)
    model = nn.Sequential(FAConv2d(1, 3, 3), nn.Tanh(), nn.Flatten(),
                          soap_cuda.FALinear(3 * 4 * 4, 2))
    angles = soap_cuda.metrics.feedback_alignment(model)
    assert set(angles) == {"0", "3"} and 0 < angles["0"]["angle_deg"] < 180
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 2, (5,))
    signals = soap_cuda.metrics.error_signal_alignment(model, nn.CrossEntropyLoss(), x, y)
    assert set(signals) == {"0", "3"}


# --- convert ----------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_shaped(width=8, classes=10):
    """ResNet-18's layout (7x7 stem, 4 stages of 2 basic blocks, fc), at a small width."""
    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = width
    stages = nn.ModuleDict()
    for i, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        stages[f"stage{i}"] = nn.Sequential(_Block(cin, cout, 1 if i == 0 else 2),
                                            _Block(cout, cout, 1))
        cin = cout
    return nn.ModuleDict({"stem": nn.Sequential(*layers), "stages": stages,
                          "head": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                nn.Linear(cin, classes))})


def _run(model, x):
    x = model["stem"](x)
    for stage in model["stages"].values():
        x = stage(x)
    return model["head"](x)


def test_convert_swaps_every_conv_and_linear_of_a_resnet18_shaped_model():
    torch.manual_seed(6)
    model = resnet18_shaped().eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 21  # 1 stem + 16 block convs + 3 shortcuts + fc
    fa, swapped = soap_cuda.convert(model, return_swapped=True, feedback="sign",
                                    sync_every=1000)
    assert sorted(swapped) == sorted(convs)
    assert all(type(m) not in (nn.Conv2d, nn.Linear) for m in fa.modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_run(fa, x), _run(model, x))
    kept, _ = soap_cuda.convert(model, skip=("stem.0", "head.2"), return_swapped=True), None
    assert type(kept[0]["stem"][0]) is nn.Conv2d and type(kept[0]["head"][2]) is nn.Linear


def test_convert_names_layers_it_cannot_convert():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, 3), nn.LazyLinear(4))
    with pytest.warns(UserWarning, match=r"1 \(ConvTranspose2d\), 2 \(LazyLinear\)"):
        converted = soap_cuda.convert(model)
    assert type(converted[0]) is FAConv2d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soap_cuda.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


# --- bad input --------------------------------------------------------------------------------

def _bad(case):
    x, w, b, B, stride, padding, dilation, groups = _make(CASES[2], dtype=torch.float32)
    if case == "int_input":
        x = x.int()
    elif case == "weight_dim":
        w = w[0, 0]
    elif case == "b_shape":
        B = B[:, :, :2]
    elif case == "b_dtype":
        B = B.double()
    elif case == "channels":
        x = x[:, :2]
    elif case == "stride_len":
        stride = [1]
    elif case == "stride_zero":
        stride = [0, 1]
    elif case == "padding_neg":
        padding = [-1, 0]
    elif case == "groups":
        groups = 2
    elif case == "bias":
        b = b[:3]
    return x, w, b, B, stride, padding, dilation, groups


@pytest.mark.parametrize("case,pattern", [
    ("int_input", r"argument 'input' must be a floating-point tensor"),
    ("weight_dim", r"argument 'weight' must be 3-, 4- or 5-D"),
    ("b_shape", r"argument 'b_matrix' must have the shape of 'weight'"),
    ("b_dtype", r"argument 'b_matrix' must have the dtype of 'input'"),
    ("channels", r"argument 'input' must have shape \(batch, 3, 2 spatial dims\)"),
    ("stride_len", r"argument 'stride' must have one entry per spatial dimension \(2\)"),
    ("stride_zero", r"argument 'stride' must be >= 1"),
    ("padding_neg", r"argument 'padding' must be >= 0"),
    ("groups", r"argument 'groups' must be >= 1 and divide out_channels=5"),
    ("bias", r"argument 'bias' must have shape \[5\] \(out_channels\)"),
])
def test_bad_input_is_rejected_with_a_clear_message(case, pattern):
    with pytest.raises(RuntimeError, match=r"soap_cuda::fa_conv: " + pattern):
        op(*_bad(case))


def test_bad_backward_input_is_rejected():
    x, w, b, B, stride, padding, dilation, groups = _make(CASES[2])
    with pytest.raises(RuntimeError, match=r"fa_conv_backward: argument 'grad_output' must have "
                                           r"shape \(2, 5, \.\.\.\)"):
        op_backward(torch.randn(2, 4, 3, 3, dtype=torch.float64), x, B, stride, padding,
                    dilation, groups, [True, True, True])


# --- torch.compile, autocast --------------------------------------------------------------------

def test_compile_fullgraph_matches_eager():
    torch.manual_seed(7)
    model = nn.Sequential(FAConv2d(2, 4, 3, padding=1), nn.ReLU(), FAConv2d(4, 3, 3),
                          nn.Flatten(), soap_cuda.FALinear(3 * 4 * 4, 2))
    x = torch.randn(3, 2, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_autocast_cpu_bfloat16_follows_nn_conv2d():
    torch.manual_seed(8)
    conv = nn.Conv2d(3, 4, 3)
    fa = FAConv2d.from_conv(conv, feedback="bp")
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_fa = conv(x), fa(x)
    assert y_fa.dtype == y.dtype == torch.bfloat16
    torch.testing.assert_close(y_fa, y)
    y_fa.float().sum().backward()
    assert fa.weight.grad.dtype == torch.float32


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-g{c[8]}")
def test_cuda_matches_cpu(case):
    x, w, b, B, stride, padding, dilation, groups = _make(case)
    g = torch.randn_like(op(x, w, b, B, stride, padding, dilation, groups))
    cuda = [t.cuda() for t in (x, w, b, B)]
    torch.testing.assert_close(op(*cuda, stride, padding, dilation, groups).cpu(),
                               op(x, w, b, B, stride, padding, dilation, groups), **TIGHT)
    got = op_backward(g.cuda(), cuda[0], cuda[3], stride, padding, dilation, groups,
                      [True, True, True])
    want = op_backward(g, x, B, stride, padding, dilation, groups, [True, True, True])
    for a, e in zip(got, want):
        torch.testing.assert_close(a.cpu(), e, **TIGHT)
