"""Feedback rules on FALinear: values after a sync, the example-counted schedule, state."""
import io
import math

import pytest
import torch
from torch import nn

import soap_cuda
from soap_cuda import FALinear
from soap_cuda.reference import SeedFALinear
from soap_cuda.metrics import angle_deg


def mlp(rule, sync_every=None, sizes=(12, 16, 8, 3), **kw):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [FALinear(a, b, feedback=rule, sync_every=sync_every, **kw), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).double()


@pytest.mark.parametrize("rule", ["sign", "rescaled_sign", "scaled_sign", "random_sign"])
def test_sync_sets_b_by_the_rule(rule):
    layer = FALinear(37, 23, feedback=rule, dtype=torch.float64)
    b0 = layer.b_matrix.clone()
    with torch.no_grad():
        layer.weight.normal_()
    layer.sync_now()
    sign = torch.sign(layer.weight.detach())
    b = layer.b_matrix
    if rule == "sign":
        assert torch.equal(b, sign)
    elif rule == "rescaled_sign":
        assert torch.equal(b, b0.abs() * sign)
    elif rule == "scaled_sign":
        torch.testing.assert_close(b.norm(), b0.norm(), rtol=1e-12, atol=0)
        assert torch.equal(torch.sign(b), sign) and len(torch.unique(b.abs())) == 1
    else:  # random_sign: signs of W, fresh magnitudes each sync, reproducible from the seed
        assert torch.equal(torch.sign(b), sign)
        first = b.clone()
        layer.sync_now()
        assert not torch.equal(layer.b_matrix, first)
        twin = FALinear(37, 23, feedback=rule, dtype=torch.float64,
                        feedback_seed=layer.feedback_seed)
        twin.load_state_dict(layer.state_dict())
        twin.sync_count = 0
        twin.sync_now()
        assert torch.equal(twin.b_matrix, first)


def test_fused_model_sync_equals_per_layer_sync():
    torch.manual_seed(3)
    model = nn.Sequential(FALinear(9, 7, feedback="sign"), FALinear(7, 5, feedback="rescaled_sign"),
                          FALinear(5, 4, feedback="scaled_sign"), FALinear(4, 2))
    twin = nn.Sequential(*(FALinear(l.in_features, l.out_features, feedback=l.feedback)
                           for l in model))
    twin.load_state_dict(model.state_dict())
    assert soap_cuda.sync_feedback(model) == 3
    for layer in twin:
        if layer.feedback != "fa":
            layer.sync_now()
    for a, b in zip(model, twin):
        assert torch.equal(a.b_matrix, b.b_matrix)
    assert model[3].sync_count == 0  # "fa" never syncs


def test_bp_rule_is_backprop():
    torch.manual_seed(0)
    fa = mlp("bp")
    ref = nn.Sequential(*(nn.Linear(l.in_features, l.out_features) if isinstance(l, FALinear)
                          else l for l in fa)).double()
    ref.load_state_dict({k: v for k, v in fa.state_dict().items()
                         if not k.endswith(("b_matrix", "_extra_state"))})
    x = torch.randn(5, 12, dtype=torch.float64)
    fa(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    for p, q in zip(fa.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_schedule_counts_examples_across_changing_batch_sizes():
    T = 64
    layer = FALinear(4, 3, feedback="sign", sync_every=T)
    count, syncs = 0, 0
    for n in [32, 50, 7, 32, 50, 7, 32, 50, 7, 100, 1, 200]:
        before = count
        count += n
        syncs += count // T > before // T
        layer(torch.randn(n, 4))
        assert layer.examples_seen == count and layer.sync_count == syncs
    assert syncs == 6  # 568 examples cross 8 multiples of 64, two batches cross two at once


def test_sync_uses_current_weights_before_the_crossing_batch():
    layer = FALinear(6, 4, feedback="sign", sync_every=10)
    layer(torch.randn(9, 6))
    assert layer.sync_count == 0  # not at 0 and not before T
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 6))
    layer(torch.randn(1, 6))  # count reaches 10: sync now, with this W
    assert layer.sync_count == 1 and torch.equal(layer.b_matrix, torch.sign(layer.weight.detach()))


def test_no_counting_in_eval_or_no_grad_or_paused():
    layer = FALinear(6, 4, feedback="sign", sync_every=10)
    layer.eval()
    layer(torch.randn(50, 6))
    layer.train()
    with torch.no_grad():
        layer(torch.randn(50, 6))
    with soap_cuda.schedule_paused(layer):
        layer(torch.randn(50, 6))
    assert layer.examples_seen == 0 and layer.sync_count == 0


def test_sync_at_start_and_never():
    layer = FALinear(6, 4, feedback="sign", sync_every=100, sync_at_start=True)
    layer(torch.randn(3, 6))
    assert layer.sync_count == 1
    never = FALinear(6, 4, feedback="sign")
    b0 = never.b_matrix.clone()
    never(torch.randn(500, 6))
    assert torch.equal(never.b_matrix, b0)


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="feedback must be one of"):
        FALinear(3, 2, feedback="signs")
    with pytest.raises(ValueError, match="sync_every must be a positive number"):
        FALinear(3, 2, feedback="sign", sync_every=0)
    with pytest.raises(ValueError, match="has no effect with feedback='fa'"):
        FALinear(3, 2, sync_every=10)


def _train(model, opt, batches, start=0):
    for i in range(start, len(batches)):
        x, y = batches[i]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("rule", ["sign", "rescaled_sign", "scaled_sign", "random_sign"])
def test_save_load_mid_run_resumes_bit_for_bit(rule):
    torch.manual_seed(11)
    sizes = [32, 50, 7] * 4
    batches = [(torch.randn(n, 12, dtype=torch.float64), torch.randint(0, 3, (n,)))
               for n in sizes]
    make = lambda: mlp(rule, sync_every=40)
    torch.manual_seed(5)
    straight = make()
    opt = torch.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9)
    _train(straight, opt, batches)

    torch.manual_seed(5)
    first = make()
    opt1 = torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.9)
    _train(first, opt1, batches[:5])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    torch.manual_seed(999)  # a different RNG state must not matter
    resumed = make()
    resumed.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, batches, start=5)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), k
        else:
            assert a == b, k


@pytest.mark.parametrize("rule", ["fa", "rescaled_sign", "scaled_sign", "sign"])
def test_seed_state_dict_loads_strict_and_initialises_extras(rule):
    seed = SeedFALinear(8, 5)
    layer = FALinear(8, 5, feedback=rule, sync_every=16 if rule != "fa" else None)
    layer.examples_seen = 99
    layer.load_state_dict(seed.state_dict(), strict=True)
    assert layer.examples_seen == 0 and torch.equal(layer.b_matrix, seed.b_matrix)
    if rule == "rescaled_sign":
        assert torch.equal(layer.b_init, seed.b_matrix)
    if rule == "scaled_sign":
        torch.testing.assert_close(layer.b_init_norm, seed.b_matrix.double().norm())


def test_strict_load_still_catches_really_missing_keys():
    layer = FALinear(8, 5)
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"weight": torch.zeros(5, 8), "bias": torch.zeros(5)})


@pytest.mark.parametrize("rule,expected", [("sign", 37.0), ("scaled_sign", 37.0),
                                           ("rescaled_sign", 50.5)])
def test_angle_after_sync_matches_theory(rule, expected):
    """cos(W, sign W) = E|w| / sqrt(E w^2) = sqrt(2/pi) -> 37.0 deg; with independent |B0|:
    cos = (E|b| E|w|) / sqrt(E b^2 E w^2) = 2/pi -> 50.5 deg."""
    assert abs(math.degrees(math.acos(math.sqrt(2 / math.pi))) - 37.0) < 0.1
    assert abs(math.degrees(math.acos(2 / math.pi)) - 50.5) < 0.1
    layer = FALinear(1000, 1000, feedback=rule)
    layer.sync_now()
    assert abs(angle_deg(layer.b_matrix, layer.weight) - expected) < 1.0
    info = soap_cuda.metrics.feedback_alignment(layer)
    assert abs(next(iter(info.values()))["angle_deg"] - expected) < 1.0


def test_error_signal_metrics():
    torch.manual_seed(2)
    model = nn.Sequential(FALinear(10, 20, feedback="sign"), nn.Tanh(), FALinear(20, 20),
                          nn.Tanh(), FALinear(20, 4))
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    loss_fn = nn.CrossEntropyLoss()
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    seen = [l.examples_seen for l in model if isinstance(l, FALinear)]
    info = soap_cuda.metrics.error_signal_alignment(model, loss_fn, x, y)
    assert list(info) == ["0", "2", "4"]
    # the last layer gets the loss gradient itself: identical under FA and BP
    assert info["4"]["angle_deg"] < 1e-3 and abs(info["4"]["norm_ratio"] - 1) < 1e-6
    assert info["2"]["angle_deg"] > 1.0  # a random B scrambles the error reaching layer 2
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)  # .grad untouched
    assert seen == [l.examples_seen for l in model if isinstance(l, FALinear)]
    # with B := W everywhere the error signals agree exactly
    bp = nn.Sequential(FALinear(10, 20, feedback="bp"), nn.Tanh(), FALinear(20, 4, feedback="bp"))
    for name, values in soap_cuda.metrics.error_signal_alignment(bp, loss_fn, x, y).items():
        assert values["angle_deg"] < 1e-3 and abs(values["norm_ratio"] - 1) < 1e-6


def test_sign_rule_raises_the_error_norm_that_rescaled_sign_keeps():
    """The seed's confound: sign(W) feedback is much larger than xavier-scale B."""
    torch.manual_seed(4)
    def ratio(rule):
        torch.manual_seed(4)
        model = nn.Sequential(FALinear(100, 200, feedback=rule), nn.Tanh(),
                              FALinear(200, 10, feedback=rule))
        soap_cuda.sync_feedback(model)
        x, y = torch.randn(32, 100), torch.randint(0, 10, (32,))
        return soap_cuda.metrics.error_signal_alignment(model, nn.CrossEntropyLoss(), x, y)["0"]
    assert ratio("sign")["norm_ratio"] > 5 * ratio("rescaled_sign")["norm_ratio"]
