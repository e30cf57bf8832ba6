"""soap_cuda.optim.SOAP: slope and curvature along d against d . grad L and d^T H d (known
Hessian for linear regression, double backward for an MLP), the step rules, the log."""
import pytest
import torch
from torch import nn

from soap_cuda import FALinear
from soap_cuda.optim import SOAP


def mse(out, target):
    return 0.5 * ((out - target) ** 2).sum(-1)


def direction_closure(model, x, y, direction=None):
    """Closure filling .grad: the FA pseudo-gradient, or -direction when one is given."""
    def closure():
        model.zero_grad()
        loss = mse(model(x), y).mean()
        loss.backward()
        if direction is not None:
            for p, d in zip(model.parameters(), direction):
                p.grad = -d.clone()
        return loss
    return closure


def exact_slope_curvature(model, x, y, direction):
    params = list(model.parameters())
    loss = mse(model(x), y).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    slope = sum((g * d).sum() for g, d in zip(grads, direction))
    hd = torch.autograd.grad(slope, params)
    return slope.item(), sum((h * d).sum() for h, d in zip(hd, direction)).item()


def test_linear_regression_known_hessian_and_exact_newton_step():
    torch.manual_seed(torch.randint(0, 2**31, ()).item())
    model = nn.Sequential(nn.Linear(5, 3, dtype=torch.float64))
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    direction = [torch.randn_like(p) for p in model.parameters()]
    dw, db = direction
    # L = mean 0.5 ||W x + b - y||^2: d^T H d = mean ||dW x + db||^2, d . grad = mean r . (dW x + db)
    resid = model(x) - y
    want_slope = ((x @ dw.t() + db) * resid).sum(1).mean().item()
    want_curv = (x @ dw.t() + db).square().sum(1).mean().item()
    opt = SOAP(model.parameters(), model=model, loss_fn=mse, h=1e-2, max_step=100.0)
    opt.step(direction_closure(model, x, y, direction), x, y)
    rec = opt.history[-1]
    assert rec["g_d"] == pytest.approx(want_slope, rel=1e-8)
    assert rec["c_d"] == pytest.approx(want_curv, rel=1e-6)
    # quadratic loss: the Newton step lands on the minimum along d, as predicted
    assert rec["kind"] == "newton" and not rec["clipped"]
    assert rec["alpha"] == pytest.approx(-want_slope / want_curv, rel=1e-6)
    assert rec["actual_change"] == pytest.approx(rec["predicted_change"], rel=1e-6)
    assert rec["actual_change"] < 0


@pytest.mark.parametrize("dtype,h,rtol_c", [(torch.float64, 1e-3, 0.01), (torch.float32, 3e-2, 0.05)])
def test_mlp_slope_and_curvature_match_double_backward(dtype, h, rtol_c):
    torch.manual_seed(torch.randint(0, 2**31, ()).item())
    model = nn.Sequential(nn.Linear(4, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 2, dtype=dtype))
    x, y = torch.randn(64, 4, dtype=dtype), torch.randn(64, 2, dtype=dtype)
    ref = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    ref.load_state_dict(model.state_dict())
    direction = [torch.randn_like(p) for p in model.parameters()]
    x64, y64, d64 = x.double(), y.double(), [d.double() for d in direction]
    slope, curv = exact_slope_curvature(ref, x64, y64, d64)
    if dtype == torch.float32:
        # float32 needs a large h, whose truncation error (h^2 / 6 times the third derivative
        # along d) is not float32's doing and can reach 10% of a small slope: hold float32 to
        # the same finite differences taken in float64, which differ from it by rounding alone
        ref_opt = SOAP(ref.parameters(), model=ref, loss_fn=mse, h=h)
        ref_opt.step(direction_closure(ref, x64, y64, d64), x64, y64)
        slope, curv = ref_opt.history[-1]["g_d"], ref_opt.history[-1]["c_d"]
    opt = SOAP(model.parameters(), model=model, loss_fn=mse, h=h)
    opt.step(direction_closure(model, x, y, direction), x, y)
    rec = opt.history[-1]
    # the second difference loses the rounding of its three losses, divided by h^2: an absolute
    # error of some multiple of eps * loss / h^2 (64 covers the sums over 128 outputs)
    rounding = 64 * torch.finfo(dtype).eps * abs(rec["loss"]) / h**2
    assert rec["g_d"] == pytest.approx(slope, rel=0.01)
    assert rec["c_d"] == pytest.approx(curv, rel=rtol_c, abs=rounding)


def _soap_fa_run(steps=25):
    model = nn.Sequential(FALinear(6, 16, dtype=torch.float64), nn.Tanh(),
                          FALinear(16, 2, dtype=torch.float64))
    x = torch.randn(128, 6, dtype=torch.float64)
    y = torch.sin(x[:, :2]) + 0.5 * x[:, 2:4]
    opt = SOAP(model.parameters(), model=model, loss_fn=mse, h=1e-3, max_step=0.5)
    losses = [opt.step(direction_closure(model, x, y), x, y).item() for _ in range(steps)]
    return opt, losses


def test_fa_direction_on_an_fa_mlp_and_training_lowers_the_loss():
    # On fresh draws the FA direction cuts the loss by 30% in 25 steps about 96 times in 100
    # (150 seeds checked offline; in a few the FA direction makes almost no progress), and it
    # never raised it: require the cut in 3 of 5 draws (fails about once in 1,500) and no rise.
    torch.manual_seed(torch.randint(0, 2**31, ()).item())
    runs = [_soap_fa_run() for _ in range(5)]
    assert all(losses[-1] <= losses[0] * (1 + 1e-9) for _, losses in runs)
    assert sum(losses[-1] < 0.7 * losses[0] for _, losses in runs) >= 3
    opt = runs[0][0]
    rec = opt.history[0]
    assert {"g_d", "c_d", "alpha", "step_norm", "predicted_change", "actual_change"} <= set(rec)
    assert all(r["step_norm"] <= 0.5 + 1e-12 for r in opt.history)


def test_fallback_on_negative_curvature_and_trust_bound():
    model = nn.Sequential(nn.Linear(3, 2, dtype=torch.float64))
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)

    def concave(out, target):
        return -((out - target) ** 2).sum(-1)

    def closure():
        model.zero_grad()
        loss = concave(model(x), y).mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    opt = SOAP(model.parameters(), model=model, loss_fn=concave, fallback_lr=1e-3, max_step=1e-4)
    opt.step(closure, x, y)
    rec = opt.history[-1]
    assert rec["c_d"] < 0 and rec["kind"] == "fallback"
    assert rec["clipped"] and rec["step_norm"] == pytest.approx(1e-4)
    moved = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert moved.item() == pytest.approx(1e-4, rel=1e-9)
    assert rec["actual_change"] < 0


def test_closure_mode_agrees_with_batched_mode_in_float64():
    model = nn.Sequential(nn.Linear(4, 6, dtype=torch.float64), nn.Sigmoid(),
                          nn.Linear(6, 2, dtype=torch.float64))
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = SOAP(model.parameters(), model=model, loss_fn=mse, h=1e-3)
    a.step(direction_closure(model, x, y), x, y)
    model.load_state_dict(state)
    b = SOAP(model.parameters(), h=1e-3)   # no model: the closure gives the three losses
    b.step(direction_closure(model, x, y))
    for key in ("g_d", "c_d", "alpha", "actual_change"):
        assert b.history[-1][key] == pytest.approx(a.history[-1][key], rel=1e-6, abs=1e-12)


def test_zero_direction_is_a_no_op_and_bad_settings_are_rejected():
    model = nn.Sequential(nn.Linear(2, 1, dtype=torch.float64))
    x = torch.randn(4, 2, dtype=torch.float64)
    opt = SOAP(model.parameters(), model=model, loss_fn=mse)
    before = [p.detach().clone() for p in model.parameters()]
    zero = [torch.zeros_like(p) for p in model.parameters()]
    opt.step(direction_closure(model, x, x[:, :1], zero), x, x[:, :1])
    assert opt.history[-1]["kind"] == "zero-direction"
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError):
        SOAP(model.parameters(), h=0.0)


def _fa_problem(seed):
    """An MLP (exact gradients, so double backward gives the true d^T H d) and a random
    descent-ish direction standing in for a poor pseudo-gradient."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16, dtype=torch.float64), nn.Tanh(),
                          nn.Linear(16, 2, dtype=torch.float64))
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    return model, x, y


def _poor_direction(model, x, y):
    model.zero_grad()
    mse(model(x), y).mean().backward()
    return [-(p.grad + 2 * p.grad.norm() * torch.randn_like(p) / p.numel() ** 0.5)
            for p in model.parameters()]


def test_refine_picks_a_direction_at_least_as_steep_and_is_reproducible():
    finals = []
    for _ in range(2):
        model, x, y = _fa_problem(3)
        opt = SOAP(model.parameters(), model=model, loss_fn=mse, h=1e-4, max_step=0.2,
                   refine=16, refine_scale=0.5, seed=7)
        for _ in range(4):
            opt.step(direction_closure(model, x, y, _poor_direction(model, x, y)), x, y)
        for record in opt.history:
            assert record["g_d"] <= record["g_d_unrefined"] + 1e-12
            assert 0 <= record["refine_choice"] <= 16
        finals.append([p.detach().clone() for p in model.parameters()])
    assert any(r["refine_choice"] > 0 for r in opt.history)
    for a, b in zip(*finals):
        assert torch.equal(a, b)


def test_refined_slope_is_measured_correctly():
    """The slope reported for the chosen direction matches d . grad L by double backward."""
    model, x, y = _fa_problem(5)
    opt = SOAP(model.parameters(), model=model, loss_fn=mse, h=1e-5, refine=8, seed=1,
               measure_actual=False)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt.step(direction_closure(model, x, y, _poor_direction(model, x, y)), x, y)
    record = opt.history[-1]
    step = [p.detach() - b for p, b in zip(params, before)]  # alpha * d_chosen
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    d_chosen = [s / record["alpha"] for s in step]
    slope, curvature = exact_slope_curvature(model, x, y, d_chosen)
    assert abs(record["g_d"] - slope) <= 0.01 * abs(slope)
    assert abs(record["c_d"] - curvature) <= 0.05 * abs(curvature)


def test_refine_settings_are_checked():
    model, _, _ = _fa_problem(0)
    with pytest.raises(ValueError, match="refine"):
        SOAP(model.parameters(), refine=-1)
