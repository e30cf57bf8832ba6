"""soap_cuda.stacked, the public API: models a user builds, stacked, trained by the stacked
optimizers, and unstacked, equal (float64) to the same models trained one by one with torch.optim;
what stack() refuses, and how it says so."""
import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import soap_cuda
from soap_cuda import stacked
from soap_cuda.optim import SOAP

from conftest import plain_training_loop

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SYNC = ("sign", "rescaled_sign", "scaled_sign", "random_sign")


def conv_model(rule: str, seed: int) -> nn.Module:
    """A user's small CNN (conv, batch norm, pooling, flatten, linear), converted to `rule`."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.Tanh(), nn.Flatten(),
                        nn.Linear(6 * 2 * 2, 5))
    kwargs = {"sync_every": 12} if rule in SYNC else {}
    if rule == "dfa":
        kwargs["example_input"] = torch.zeros(1, 2, 8, 8)
    return soap_cuda.convert(net, feedback=rule, **kwargs)


def mlp(rule: str, seed: int, sync_at_start: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {"feedback": rule}
    if rule in SYNC:
        kwargs.update(sync_every=10, sync_at_start=sync_at_start)
    if rule == "dfa":
        kwargs["dfa_outputs"] = 3
    model = nn.Sequential(soap_cuda.FALinear(6, 9, **kwargs), nn.Tanh(),
                          soap_cuda.FALinear(9, 7, **kwargs), nn.ReLU(),
                          soap_cuda.FALinear(7, 3, **kwargs))
    return soap_cuda.enable_dfa(model) if rule == "dfa" else model


# 8 models: every layer rule, SGD with and without momentum beside Adam, per-model settings
RUNS = [dict(rule="fa", opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
        dict(rule="bp", opt="sgd", lr=0.05, momentum=0.0, weight_decay=0.0),
        dict(rule="sign", opt="sgd", lr=0.08, momentum=0.5, weight_decay=1e-2),
        dict(rule="rescaled_sign", opt="adam", lr=3e-3, momentum=0.0, weight_decay=0.0),
        dict(rule="scaled_sign", opt="sgd", lr=0.1, momentum=0.0, weight_decay=1e-3),
        dict(rule="random_sign", opt="adam", lr=1e-3, momentum=0.0, weight_decay=1e-2),
        dict(rule="kolen_pollack", opt="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2),
        dict(rule="kolen_pollack", opt="adam", lr=2e-3, momentum=0.0, weight_decay=1e-3)]


def _torch_optimizer(model, run, scale=None):
    groups = [{"params": list(model.parameters())}]
    if scale:  # the first feedback layer's parameters at lr * scale
        first = next(m for m in model.modules() if hasattr(m, "b_matrix"))
        own = {id(p) for p in first.parameters()}
        groups = [{"params": list(first.parameters()), "lr": run["lr"] * scale},
                  {"params": [p for p in model.parameters() if id(p) not in own]}]
    if run["opt"] == "sgd":
        return torch.optim.SGD(groups, lr=run["lr"], momentum=run["momentum"],
                               weight_decay=run["weight_decay"])
    return torch.optim.Adam(groups, lr=run["lr"], weight_decay=run["weight_decay"])


def _stacked_optimizers(net, runs, scales):
    lrs = [r["lr"] for r in runs]
    first = net.names[0]
    opts = []
    for kind in ("sgd", "adam"):
        mine = [r["opt"] == kind for r in runs]
        groups = net.param_groups(lrs, {first: scales})
        if kind == "sgd":
            opts.append(stacked.SGD(groups, lr=lrs, momentum=[r["momentum"] for r in runs],
                                    weight_decay=[r["weight_decay"] for r in runs],
                                    models=mine))
        else:
            opts.append(stacked.Adam(groups, lr=lrs,
                                     weight_decay=[r["weight_decay"] for r in runs],
                                     models=mine))
    return opts


def _assert_same_state(got: dict, want: dict, rel=1e-9):
    assert list(got) == list(want)
    for key, value in want.items():
        if not torch.is_tensor(value):
            assert got[key] == value, key
            continue
        assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        if value.is_floating_point():
            err = (got[key] - value).abs().max().item() if value.numel() else 0.0
            scale = max(1.0, value.abs().max().item() if value.numel() else 0.0)
            assert err <= rel * scale, (key, err)
        else:
            assert torch.equal(got[key], value), key


def _train_both(build, runs, x_shape, classes, steps, scales=None, shared_every=2):
    """Train the runs' models stacked and one by one on the same batches (shared by all or one
    each, alternating); return (unstacked models, separately trained models, net)."""
    models = [build(r["rule"], seed) for seed, r in enumerate(runs)]
    alone = [copy.deepcopy(m) for m in models]
    net = stacked.stack(models)
    scales = scales or [1.0] * len(runs)
    opts = _stacked_optimizers(net, runs, scales)
    singles = [_torch_optimizer(m, r, s if s != 1.0 else None)
               for m, r, s in zip(alone, runs, scales)]
    gen = torch.Generator().manual_seed(0)
    m = len(runs)
    for step in range(steps):
        shared = step % shared_every == 0
        shape = x_shape if shared else (m, *x_shape)
        x = torch.randn(shape, generator=gen)
        y = torch.randint(0, classes, shape[:len(shape) - len(x_shape) + 1], generator=gen)
        for opt in opts:
            opt.zero_grad()
        stacked.per_model_loss(net(x), y).sum().backward()
        for opt in opts:
            opt.step()
        for k, (model, opt) in enumerate(zip(alone, singles)):
            opt.zero_grad()
            xk, yk = (x, y) if shared else (x[k], y[k])
            F.cross_entropy(model(xk), yk).backward()
            opt.step()
    return stacked.unstack(net), alone, net


def test_eight_user_built_models_stacked_then_unstacked_equal_their_own_runs(float64):
    """Conv models with batch norm, every rule, SGD and Adam in one stack, a per-layer scale:
    after training, unstack() gives each model the state_dict its own run gives it (weights,
    B, B0, batch-norm statistics and counts, example counters and syncs)."""
    scales = [1.0, 2.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    back, alone, net = _train_both(conv_model, RUNS, (6, 2, 8, 8), 5, steps=9, scales=scales)
    for model, own in zip(back, alone):
        _assert_same_state(model.state_dict(), own.state_dict())
        assert type(model) is type(own)
    sign = back[RUNS.index(next(r for r in RUNS if r["rule"] == "sign"))]
    layer = next(m for m in sign.modules() if hasattr(m, "sync_count"))
    assert layer.sync_count == 4  # 54 shared-batch-equivalent examples, a sync every 12
    # the unstacked models go on training as ordinary models
    x = torch.randn(3, 2, 8, 8)
    for model, own in zip(back, alone):
        assert torch.allclose(model(x), own(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rules", [["fa", "bp", "sign", "kolen_pollack"], ["dfa", "dfa", "dfa"]],
                         ids=["rules", "dfa"])
def test_mlps_stacked_equal_their_own_runs(float64, rules):
    runs = [dict(RUNS[i % len(RUNS)], rule=rule) for i, rule in enumerate(rules)]
    back, alone, _ = _train_both(mlp, runs, (5, 6), 3, steps=7)
    for model, own in zip(back, alone):
        _assert_same_state(model.state_dict(), own.state_dict())


def test_a_stack_of_single_layers(float64):
    """The model itself a feedback layer: the stack is one stacked layer."""
    def build(rule, seed):
        torch.manual_seed(seed)
        return soap_cuda.FALinear(4, 3, feedback=rule)
    runs = [dict(RUNS[0], rule="fa"), dict(RUNS[6], rule="kolen_pollack")]
    back, alone, net = _train_both(build, runs, (5, 4), 3, steps=4)
    assert isinstance(net.module, stacked.layers.StackedLinear)
    for model, own in zip(back, alone):
        _assert_same_state(model.state_dict(), own.state_dict())


def test_sync_at_start_and_the_schedule_follow_each_models_own(float64):
    models = [mlp("sign", 0, sync_at_start=True), mlp("rescaled_sign", 1), mlp("fa", 2)]
    alone = [copy.deepcopy(m) for m in models]
    net = stacked.stack(models)
    x = torch.randn(7, 6)
    net(x)  # training mode, grad enabled: counts 7 examples and syncs where due
    for model in alone:
        model(x)
    net.eval()
    net(x)  # evaluation counts nothing
    with torch.no_grad():
        net.train()
        net(x)  # nor does a pass without grad
    for model, own in zip(stacked.unstack(net), alone):
        _assert_same_state(model.state_dict(), own.state_dict(), rel=0)


def test_soap_on_a_stack_takes_each_models_own_step(float64):
    """stacked.SOAP against optim.SOAP's batched pass, model by model."""
    lrs = [1.0, 0.5, 2.0]
    models = [mlp("fa", seed) for seed in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    net = stacked.stack(models)
    opt = stacked.SOAP(net, lrs, h=1e-2)
    per_example = functools.partial(F.cross_entropy, reduction="none")
    singles = [SOAP(m.parameters(), model=m, loss_fn=per_example, h=1e-2, lr=lr,
                    measure_actual=False) for m, lr in zip(alone, lrs)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(3, 8, 6, generator=gen), torch.randint(0, 3, (3, 8), generator=gen)
        for p in net.parameters():
            p.grad = None
        losses = stacked.per_model_loss(net(x), y)
        losses.sum().backward()
        opt.step(x, y, losses.detach())
        for k, (model, single) in enumerate(zip(alone, singles)):
            def closure(model=model, k=k):
                single.zero_grad()
                loss = F.cross_entropy(model(x[k]), y[k])
                loss.backward()
                return loss
            single.step(closure, x[k], y[k])
    for model, own in zip(stacked.unstack(net), alone):
        _assert_same_state(model.state_dict(), own.state_dict())


def test_an_optimizer_leaves_other_models_slices_exactly_as_they_are(float64):
    net = stacked.stack([mlp("fa", 0), mlp("fa", 1), mlp("fa", 2)])
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.randn_like(p)
        p.grad.view(3, -1)[1] = math.nan  # model 1's gradient is garbage: it is not trained here
    stacked.SGD(net.parameters(), lr=[0.1, 0.1, 0.2], momentum=0.9, weight_decay=0.1,
                models=[True, False, True]).step()
    for p, old in zip(net.parameters(), before):
        assert torch.equal(p.view(3, -1)[1], old.view(3, -1)[1])
        assert not torch.equal(p.view(3, -1)[0], old.view(3, -1)[0])


def test_per_model_loss_takes_shared_or_own_targets(float64):
    out = torch.randn(4, 5, 3)
    y = torch.randint(0, 3, (5,))
    shared = stacked.per_model_loss(out, y)
    own = stacked.per_model_loss(out, y.expand(4, 5))
    assert torch.equal(shared, own)
    assert torch.allclose(shared[2], F.cross_entropy(out[2], y))
    target = torch.randn(5, 3)
    mse = stacked.per_model_loss(out, target, F.mse_loss)
    assert torch.allclose(mse[1], F.mse_loss(out[1], target))


def test_a_shared_batch_and_its_copies_give_the_same_outputs(float64):
    net = stacked.stack([conv_model("fa", 0), conv_model("sign", 1)])
    net.eval()
    x = torch.randn(3, 2, 8, 8)
    assert torch.allclose(net(x), net(x.expand(2, *x.shape).clone()))
    assert net(x).shape == (2, 3, 5)
    assert net(x, per_model=False).shape == (2, 3, 5)


def test_what_stack_refuses_and_why():
    with pytest.raises(ValueError, match="DFA layers stack only with DFA layers"):
        stacked.stack([mlp("dfa", 0), mlp("fa", 1)])
    with pytest.raises(ValueError, match="not of model 0's architecture"):
        torch.manual_seed(0)
        stacked.stack([mlp("fa", 0), nn.Sequential(soap_cuda.FALinear(6, 3))])
    with pytest.raises(ValueError, match="Linear has no stacked form: convert it"):
        stacked.stack([nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2))])

    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    def odd():
        return nn.Sequential(soap_cuda.FALinear(3, 2), Odd())
    with pytest.raises(ValueError, match=r"Odd has no stacked form; soap_cuda.stacked.register"):
        stacked.stack([odd(), odd()])
    stacked.register(Odd)
    net = stacked.stack([odd(), odd()])
    assert net(torch.randn(4, 3)).shape == (2, 4, 2)
    with pytest.raises(ValueError, match=r"rank 2 \(one batch for every model\) or 3"):
        net(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="the 2 models first"):
        net(torch.randn(3, 4, 3), per_model=True)
    with pytest.raises(ValueError, match="at least one model"):
        stacked.stack([])


def test_a_compiled_stack_equals_the_eager_one(float64):
    """torch.compile of a stack's forward and backward (loss.backward() traced) over steps that
    cross syncs: every rule side by side, bp models' rows of B refreshed from W at every step
    (a compiled graph cannot watch W's version counter)."""
    import torch._dynamo

    rules = ["fa", "sign", "random_sign", "kolen_pollack", "bp"]
    nets = [stacked.stack([conv_model(r, i) for i, r in enumerate(rules)]) for _ in range(2)]
    data = [(torch.randn(len(rules), 8, 2, 8, 8), torch.randint(0, 5, (len(rules), 8)))
            for _ in range(10)]

    def make(net):
        def forward_backward(x, y):
            losses = stacked.per_model_loss(net(x, per_model=True), y)
            losses.sum().backward()
            return losses.detach()
        return stacked.SGD(net.parameters(), lr=0.05, momentum=0.9), forward_backward

    (eager_opt, eager), (compiled_opt, compiled) = make(nets[0]), make(nets[1])
    compiled = torch.compile(compiled)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for x, y in data:
            want = eager(x, y)
            eager_opt.step()
            eager_opt.zero_grad()
            got = compiled(x, y)
            compiled_opt.step()
            compiled_opt.zero_grad()
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    _assert_same_state(nets[1].state_dict(), nets[0].state_dict())


@pytest.mark.parametrize("compile", [False, True])
def test_a_graphed_step_drives_a_stacks_schedules(float64, compile):
    """soap_cuda.graphed_step on a stack: its device schedule counts and syncs every model's
    slices (one masked sync per step); the same results as the stack's plain loop, and the
    counters current in the state_dict."""
    rules = ["sign", "random_sign", "scaled_sign", "rescaled_sign", "fa", "bp"]
    nets = [stacked.stack([conv_model(r, i) for i, r in enumerate(rules)]) for _ in range(2)]
    data = [(torch.randn(len(rules), 5, 2, 8, 8), torch.randint(0, 5, (len(rules), 5)))
            for _ in range(9)]

    def loss_fn(out, y):
        return stacked.per_model_loss(out, y).sum()

    eager, driven = nets
    want = plain_training_loop(eager, stacked.SGD(eager.parameters(), lr=0.05, momentum=0.9),
                               data, loss_fn)
    step = soap_cuda.graphed_step(driven, loss_fn,
                                  stacked.SGD(driven.parameters(), lr=0.05, momentum=0.9),
                                  data[0], compile=compile)
    got = [step(x, y) for x, y in data]
    assert len(step.schedule.groups[0].synced) == 3 * 4  # three layers of four sync models
    assert all(layer._schedule_driver is step.schedule for layer in driven.layers)
    torch.testing.assert_close(torch.stack(got), want, rtol=0,
                               atol=1e-12 if compile else 0)
    _assert_same_state(driven.state_dict(), eager.state_dict(), rel=1e-12 if compile else 0)
    assert driven.layers[0].get_extra_state()["sync_count"][0] == 3  # 45 examples, T = 12
    soap_cuda.graphed._check_capturable(step.optimizer)  # stacked SGD may be captured
    with pytest.raises(ValueError, match="stacked.Adam steps inside a CUDA graph only with"):
        soap_cuda.graphed._check_capturable(stacked.Adam(driven.parameters()))
    soap_cuda.graphed._check_capturable(stacked.Adam(driven.parameters(), capturable=True))


def test_capturable_stacked_adam_equals_the_host_one(float64):
    """capturable=True keeps Adam's step count on the device: the same updates (to rounding of
    the bias corrections' powers), and a new learning rate still takes effect."""
    nets = [stacked.stack([mlp(r, i) for i, r in enumerate(["fa", "sign", "bp"])])
            for _ in range(2)]
    opts = [stacked.Adam(net.parameters(), lr=[1e-2, 2e-2, 3e-3], weight_decay=1e-3,
                         capturable=c) for net, c in zip(nets, (False, True))]
    x, y = torch.randn(3, 4, 6), torch.randint(0, 3, (3, 4))
    for step in range(6):
        for net, opt in zip(nets, opts):
            if step == 3:
                opt.param_groups[0]["lr"] = torch.tensor([1e-3, 1e-3, 5e-3])
            stacked.per_model_loss(net(x), y).sum().backward()
            opt.step()
            opt.zero_grad()
    assert torch.is_tensor(opts[1].state[nets[1].layers[0].weight]["step"])
    _assert_same_state(nets[1].state_dict(), nets[0].state_dict(), rel=1e-12)
