"""soap_cuda.graphed_step and its device schedule, held against the plain eager training loop:
every rule, linear and conv models, runs that cross several syncs (and end in a partial batch),
torch.compile(fullgraph=True) of the step, resume mid-run, and CUDA graph replays."""
import pytest
import torch
from torch import nn

import soap_cuda
from soap_cuda import FALinear
from soap_cuda.feedback import SYNC_RULES, xavier_std
from soap_cuda.reference.philox import philox_normal

from conftest import plain_training_loop, requires_cuda

RULES = ("fa", "sign", "rescaled_sign", "scaled_sign", "random_sign", "bp", "kolen_pollack",
         "dfa")
CE = nn.functional.cross_entropy


def mlp(rule, dtype=torch.float64, device="cpu", sync_every=20, sync_at_start=False):
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))
    kw = {"sync_every": sync_every, "sync_at_start": sync_at_start} if rule in SYNC_RULES else {}
    if rule == "dfa":
        kw["example_input"] = torch.randn(2, 12)
    return soap_cuda.convert(model, feedback=rule, **kw).to(device, dtype)


def cnn(rule, dtype=torch.float64, device="cpu", sync_every=20):
    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    kw = {"sync_every": sync_every} if rule in SYNC_RULES else {}
    if rule == "dfa":
        kw["example_input"] = torch.randn(2, 1, 8, 8)
    return soap_cuda.convert(model, feedback=rule, **kw).to(device, dtype)


def batches(kind, n=9, batch=7, last=4, dtype=torch.float64, device="cpu"):
    """n batches of `batch` examples then one of `last` (7 does not divide sync_every=20, so
    syncs fall inside batches)."""
    shape, classes = ((12,), 4) if kind == "mlp" else ((1, 8, 8), 10)
    sizes = [batch] * n + ([last] if last else [])
    return [(torch.randn(s, *shape, dtype=dtype, device=device),
             torch.randint(0, classes, (s,), device=device)) for s in sizes]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def plain_loop(model, optimizer, data):
    return plain_training_loop(model, optimizer, data, CE)


def graphed_loop(model, optimizer, data, **kw):
    step = soap_cuda.graphed_step(model, CE, optimizer, data[0], **kw)
    return torch.stack([step(x, y) for x, y in data]), step


def assert_same_state(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if torch.is_tensor(sa[key]):
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=atol, msg=key)
        else:
            assert sb[key] == sa[key], key


@pytest.mark.parametrize("make,kind", [(mlp, "mlp"), (cnn, "cnn")])
@pytest.mark.parametrize("rule", RULES)
def test_eager_graphed_step_equals_the_plain_loop_bit_for_bit(make, kind, rule):
    data = batches(kind)
    a, b = make(rule), make(rule)
    want = plain_loop(a, sgd(a), data)
    got, step = graphed_loop(b, sgd(b), data)
    assert torch.equal(got, want)
    assert_same_state(a, b)
    if rule in SYNC_RULES:  # 67 examples, T = 20: three syncs, all inside batches
        step.update_layers()
        assert [layer.sync_count for layer in soap_cuda.feedback.feedback_layers(b)] == [3, 3]
        assert step.schedule is not None and step.schedule.groups[0].synced


def counting_steps(optimizer):
    """optimizer, whose step() now counts its calls in optimizer.calls."""
    optimizer.calls = 0
    eager_step = optimizer.step

    def step(*args, **kwargs):
        optimizer.calls += 1
        return eager_step(*args, **kwargs)
    optimizer.step = step
    return optimizer


@pytest.mark.parametrize("rule", RULES)
def test_compiled_step_fullgraph_equals_eager(rule):
    """torch.compile(fullgraph=True) of the whole step, sync + forward + loss + backward +
    optimizer update: no graph break (it would raise), the eager loop's results to 1e-12 over
    three syncs; optimizer.step() itself runs only in the first (eager) step and the partial
    last batch."""
    data = batches("mlp")
    a, b = mlp(rule), mlp(rule)
    want = plain_loop(a, sgd(a), data)
    opt = counting_steps(sgd(b))
    got, step = graphed_loop(b, opt, data, compile=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert_same_state(a, b, atol=1e-12)
    assert opt.calls == 2 and step._compiled_body is None


OPTIMIZERS = {
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=1e-3),
    "sgd_plain": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_maximize": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.5, dampening=0.1,
                                               maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "adam_foreach_tensor_lr": lambda ps: torch.optim.Adam(ps, lr=torch.tensor(1e-2, dtype=torch.float64),
                                                          foreach=False),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("rule", ["sign", "dfa"])
def test_compiled_step_holds_the_optimizer_update(name, rule):
    """SGD and Adam(W) in their variants, traced into the step's graph (soap_cuda.optim_in_graph):
    the eager loop's results to 1e-12 in float64, Adam's bias corrections included."""
    data = batches("mlp")
    a, b = mlp(rule), mlp(rule)
    want = plain_loop(a, OPTIMIZERS[name](a.parameters()), data)
    opt = counting_steps(OPTIMIZERS[name](b.parameters()))
    got, step = graphed_loop(b, opt, data, compile=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert_same_state(a, b, atol=1e-12)
    assert opt.calls == 2 and step._compiled_body is None


def test_compiled_step_with_another_optimizer_steps_after_the_graph():
    """An optimizer the graph cannot hold (RMSprop) steps eagerly after the compiled step; the
    results are still the eager loop's."""
    data = batches("mlp", n=5)
    a, b = mlp("sign"), mlp("sign")
    want = plain_loop(a, torch.optim.RMSprop(a.parameters(), lr=1e-3), data)
    opt = counting_steps(torch.optim.RMSprop(b.parameters(), lr=1e-3))
    got, step = graphed_loop(b, opt, data, compile=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert opt.calls == len(data) and step._compiled_whole is None


@pytest.mark.parametrize("name", ["adam", "sgd_nesterov"])
def test_compiled_step_makes_a_late_parameters_state_in_the_graph(name):
    """A parameter that starts to train after some steps: the traced update makes its state
    (Adam's moments, SGD's momentum buffer) inside the graph as eager step() makes it."""
    data = batches("mlp", n=6, last=0)
    a, b = mlp("sign"), mlp("sign")
    opt_a = OPTIMIZERS[name](a.parameters())
    opt_b = counting_steps(OPTIMIZERS[name](b.parameters()))
    for model in (a, b):
        model[2].bias.requires_grad_(False)
    step = soap_cuda.graphed_step(b, CE, opt_b, data[0], compile=True)
    want = [plain_loop(a, opt_a, data[:3])]
    got = [step(x, y) for x, y in data[:3]]
    assert b[2].bias not in opt_b.state
    for model in (a, b):
        model[2].bias.requires_grad_(True)
    want.append(plain_loop(a, opt_a, data[3:]))
    got += [step(x, y) for x, y in data[3:]]
    torch.testing.assert_close(torch.stack(got), torch.cat(want), rtol=0, atol=1e-12)
    assert_same_state(a, b, atol=1e-12)
    assert opt_b.calls == 1 and b[2].bias in opt_b.state


@pytest.mark.parametrize("rule", ["dfa", "random_sign", "scaled_sign", "kolen_pollack"])
def test_compiled_conv_step_equals_eager(rule):
    data = batches("cnn", n=5)
    a, b = cnn(rule), cnn(rule)
    want = plain_loop(a, sgd(a), data)
    got, _ = graphed_loop(b, sgd(b), data, compile=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert_same_state(a, b, atol=1e-12)


@pytest.mark.parametrize("rule,compile", [("sign", False), ("random_sign", False),
                                          ("scaled_sign", False), ("random_sign", True)])
def test_resume_mid_run_continues_exactly(rule, compile):
    """A checkpoint taken while the device schedule drives the layers holds its counters; a
    fresh model and step loaded from it continue as the uninterrupted run (bit for bit eager,
    to 1e-12 compiled, Adam's state included)."""
    make_opt = sgd if not compile else \
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3)
    data = batches("mlp", n=12, last=0)
    whole = mlp(rule)
    want = plain_loop(whole, make_opt(whole), data)
    first = mlp(rule)
    opt = make_opt(first)
    step = soap_cuda.graphed_step(first, CE, opt, data[0], compile=compile)
    losses = [step(x, y) for x, y in data[:5]]
    saved_model, saved_opt = first.state_dict(), opt.state_dict()
    assert saved_model["0._extra_state"]["examples_seen"] == 35  # current, not stale
    second = mlp(rule)
    second.load_state_dict(saved_model)
    opt2 = make_opt(second)
    opt2.load_state_dict(saved_opt)
    step2 = soap_cuda.graphed_step(second, CE, opt2, data[5], compile=compile)
    losses += [step2(x, y) for x, y in data[5:]]
    atol = 1e-12 if compile else 0.0
    torch.testing.assert_close(torch.stack(losses), want, rtol=0, atol=atol)
    assert_same_state(whole, second, atol=atol)


def test_load_state_dict_while_driven_reloads_the_device_counters():
    data = batches("mlp", n=6, last=0)
    model = mlp("sign")
    step = soap_cuda.graphed_step(model, CE, sgd(model), data[0])
    for x, y in data[:2]:
        step(x, y)
    state = model.state_dict()
    for x, y in data[2:]:
        step(x, y)
    model.load_state_dict(state)
    assert model.state_dict()["0._extra_state"] == state["0._extra_state"]
    step.close()
    assert model[0].examples_seen == 14 and model[0]._schedule_driver is None


def test_close_hands_the_schedule_back_exactly():
    data = batches("mlp", n=10, last=0)
    a, b = mlp("rescaled_sign"), mlp("rescaled_sign")
    want = plain_loop(a, sgd(a), data)
    opt = sgd(b)
    step = soap_cuda.graphed_step(b, CE, opt, data[0])
    got = [step(x, y) for x, y in data[:6]]
    step.close()
    got += list(plain_loop(b, opt, data[6:]))
    assert torch.equal(torch.stack(got), want)
    assert_same_state(a, b)


def test_sync_at_start_and_period_on_the_device():
    data = batches("mlp", n=8, last=0)
    a, b = mlp("sign", sync_at_start=True), mlp("sign", sync_at_start=True)
    want = plain_loop(a, sgd(a), data)
    got, step = graphed_loop(b, sgd(b), data)
    assert torch.equal(got, want)
    assert [layer.sync_count for layer in b if isinstance(layer, FALinear)] == [1, 1]  # driven
    step.update_layers()
    assert [layer.sync_count for layer in b if isinstance(layer, FALinear)] == [3, 3]  # 0, 20, 40


def test_random_sign_magnitudes_come_from_the_seeded_stream():
    """After a run, B = std * sign(W at the last sync) * |Philox(feedback_seed, k)| with k the
    last sync's count: reproducible from the seed alone."""
    data = batches("mlp", n=3, batch=20, last=0)  # T = 20: a sync before every step
    model = mlp("random_sign")
    step = soap_cuda.graphed_step(model, CE, torch.optim.SGD(model.parameters(), lr=0.0), data[0])
    for x, y in data:
        step(x, y)
    layer = model[0]
    step.update_layers()
    assert layer.sync_count == 3
    noise = philox_normal(layer.feedback_seed, 2, layer.weight.shape, dtype=torch.float64)
    want = torch.sign(layer.weight.detach()) * noise.abs() * xavier_std(layer)
    assert torch.equal(layer.b_matrix, want)


def test_refusals():
    model = mlp("sign")
    data = batches("mlp", n=1, last=0)
    with pytest.raises(ValueError, match="graphs=True needs the batch"):
        soap_cuda.graphed_step(model, CE, sgd(model), data[0], graphs=True)
    step = soap_cuda.graphed_step(model, CE, sgd(model), data[0])
    step(*data[0])
    with pytest.raises(ValueError, match="driven by another graphed step"):
        soap_cuda.graphed_step(model, CE, sgd(model), data[0])
    step.close()
    soap_cuda.graphed_step(model, CE, sgd(model), data[0])


# -- CUDA graphs (benchmarks/gpu.sh) ---------------------------------------------------------
@requires_cuda
@pytest.mark.cuda_graphs
@pytest.mark.parametrize("make,kind", [(mlp, "mlp"), (cnn, "cnn")])
@pytest.mark.parametrize("rule", RULES)
def test_cuda_graph_replays_equal_the_eager_loop(make, kind, rule):
    """Warm-up, capture and replays (and a partial last batch, eager) against the plain loop in
    float32: syncs at the same examples, results to float32 rounding."""
    data = batches(kind, n=12, dtype=torch.float32, device="cuda")
    a = make(rule, dtype=torch.float32, device="cuda")
    b = make(rule, dtype=torch.float32, device="cuda")
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, capturable=True)
    want = plain_loop(a, adam(a), data)
    got, step = graphed_loop(b, adam(b), data)
    assert step.graph is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if torch.is_tensor(sa[key]):
            torch.testing.assert_close(sb[key], sa[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert sb[key] == sa[key], key


@requires_cuda
@pytest.mark.cuda_graphs
@pytest.mark.parametrize("rule", ["random_sign"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam_capturable"])
def test_cuda_compiled_reduce_overhead_step_equals_the_eager_loop(rule, optimizer):
    """torch's own CUDA graphs (mode="reduce-overhead") over the whole compiled step, the
    optimizer's update included."""
    make_opt = sgd if optimizer == "sgd" else \
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, capturable=True)
    data = batches("mlp", n=12, last=0, dtype=torch.float32, device="cuda")
    a = mlp(rule, dtype=torch.float32, device="cuda")
    b = mlp(rule, dtype=torch.float32, device="cuda")
    want = plain_loop(a, make_opt(a), data)
    got, step = graphed_loop(b, make_opt(b), data, compile="reduce-overhead")
    assert not step.graphs and step._compiled_body is None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_same_state(a, b, atol=1e-5)


@requires_cuda
def test_cuda_graph_needs_a_capturable_adam():
    model = mlp("sign", dtype=torch.float32, device="cuda")
    data = batches("mlp", n=1, last=0, dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match="capturable=True"):
        soap_cuda.graphed_step(model, CE, torch.optim.Adam(model.parameters()), data[0])
