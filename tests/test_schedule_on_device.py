"""soap_cuda.schedule_on_device: the FA layers' sync schedule as device tensors advanced by their
own forwards, held against the layers' own schedule: eager bit for bit, and the model compiled
whole with torch.compile(fullgraph=True) to 1e-12 in float64, over runs that cross several syncs
inside batches and end in a partial batch."""
import pytest
import torch

import soap_cuda
from soap_cuda import stacked
from soap_cuda.feedback import SYNC_RULES

from conftest import requires_cuda
from test_graphed_step import CE, assert_same_state, batches, cnn, mlp, plain_loop, sgd


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each model compiles nn.Sequential.forward again; dynamo counts those compilations per
    code object across the session, against a limit of 8."""
    import torch._dynamo
    torch._dynamo.reset()


def sync_counts(model):
    return [layer.get_extra_state()["sync_count"]
            for layer in soap_cuda.feedback.feedback_layers(model)]


@pytest.mark.parametrize("make,kind", [(mlp, "mlp"), (cnn, "cnn")])
@pytest.mark.parametrize("rule", SYNC_RULES)
def test_driven_from_the_forward_equals_the_layers_own_schedule(make, kind, rule):
    data = batches(kind)
    a, b = make(rule), make(rule)
    want = plain_loop(a, sgd(a), data)
    driver = soap_cuda.schedule_on_device(b)
    assert driver.in_forward and all(layer._schedule_driver is driver
                                     for layer in soap_cuda.feedback.feedback_layers(b))
    got = plain_loop(b, sgd(b), data)
    assert torch.equal(got, want)
    assert_same_state(a, b)  # counters and sync counts read from the device
    assert sync_counts(b) == [3, 3]  # 67 examples, T = 20


@pytest.mark.parametrize("make,kind,rules", [(mlp, "mlp", SYNC_RULES),
                                             (cnn, "cnn", ("random_sign", "scaled_sign"))])
def test_the_model_compiles_whole_with_its_schedule(make, kind, rules):
    """torch.compile(model, fullgraph=True) (a graph break would raise): the layers' eager
    results to 1e-12, syncs at the same examples."""
    for rule in rules:
        torch._dynamo.reset()
        data = batches(kind, n=7)
        a, b = make(rule), make(rule)
        want = plain_loop(a, sgd(a), data)
        soap_cuda.schedule_on_device(b)
        got = plain_loop(torch.compile(b, fullgraph=True), sgd(b), data)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=rule)
        assert_same_state(a, b, atol=1e-12)


def test_sync_at_start_eval_and_no_grad_forwards_do_not_count():
    data = batches("mlp", n=8, last=0)
    a, b = mlp("sign", sync_at_start=True), mlp("sign", sync_at_start=True)
    want = plain_loop(a, sgd(a), data)
    soap_cuda.schedule_on_device(b)
    compiled = torch.compile(b, fullgraph=True)
    got = []
    opt = sgd(b)
    for x, y in data:
        with torch.no_grad():
            compiled(x)  # not counted: no grad
        b.eval()
        compiled(x)  # not counted: eval mode
        b.train()
        got.append(plain_loop(compiled, opt, [(x, y)]))
    torch.testing.assert_close(torch.cat(got), want, rtol=0, atol=1e-12)
    assert sync_counts(b) == [3, 3]  # at 0, 20 and 40 examples


def test_detach_and_load_state_dict_continue_exactly():
    data = batches("mlp", n=10, last=0)
    a, b = mlp("random_sign"), mlp("random_sign")
    want = plain_loop(a, sgd(a), data)
    opt = sgd(b)
    driver = soap_cuda.schedule_on_device(b)
    got = [plain_loop(b, opt, data[:4])]
    saved = b.state_dict()
    got.append(plain_loop(b, opt, data[4:6]))
    driver.detach()  # the layers count for themselves from the current counts
    assert b[0].examples_seen == 42 and b[0]._schedule_driver is None
    got.append(plain_loop(b, opt, data[6:]))
    assert torch.equal(torch.cat(got), want)
    assert_same_state(a, b)
    c = mlp("random_sign")
    driver = soap_cuda.schedule_on_device(c)
    c.load_state_dict(saved)  # into the device counters
    assert c.state_dict()["0._extra_state"] == saved["0._extra_state"]
    assert int(driver.groups[0].examples[0]) == 28


def test_refusals():
    model = mlp("sign")
    soap_cuda.schedule_on_device(model)
    data = batches("mlp", n=1, last=0)
    with pytest.raises(ValueError, match="driven by another graphed step"):
        soap_cuda.graphed_step(model, CE, sgd(model), data[0])
    with pytest.raises(ValueError, match="driven by another"):
        soap_cuda.schedule_on_device(model)
    with pytest.raises(ValueError, match="no layer of this model has a sync schedule"):
        soap_cuda.schedule_on_device(mlp("fa"))
    net = stacked.stack([mlp("sign"), mlp("sign")])
    with pytest.raises(ValueError, match="graphed_step"):
        soap_cuda.schedule_on_device(net)


@requires_cuda
@pytest.mark.parametrize("rule", ["random_sign", "scaled_sign"])
def test_cuda_compiled_model_with_its_schedule_equals_the_eager_loop(rule):
    data = batches("mlp", n=12, dtype=torch.float32, device="cuda")
    a = mlp(rule, dtype=torch.float32, device="cuda")
    b = mlp(rule, dtype=torch.float32, device="cuda")
    want = plain_loop(a, sgd(a), data)
    soap_cuda.schedule_on_device(b)
    got = plain_loop(torch.compile(b, fullgraph=True), sgd(b), data)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sync_counts(b) == sync_counts(a)
