"""soap_cuda.metrics for every model of a stacked network at once: losses and accuracies, and
the alignment of each model's feedback (B against W) and learning signal (error signals and
weight gradients by its rule against backprop's)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .net import StackedNet, per_model_loss


@torch.no_grad()
def loss_and_accuracy(net: StackedNet, x: torch.Tensor, y: torch.Tensor,
                      chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Each model's mean cross-entropy and accuracy on (x, y), shared by all, in passes of
    `chunk` examples."""
    m = net.models
    total = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.int64, device=x.device)
    for i in range(0, len(y), chunk):
        xs, ys = x[i:i + chunk], y[i:i + chunk]
        out = net(xs, per_model=False)
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), ys.repeat(m),
                             reduction="none").view(m, -1)
        total += ce.sum(1).double()
        correct += (out.argmax(-1) == ys).sum(1)
    return (total / len(y)).tolist(), (correct.double() / len(y)).tolist()


def _products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a.b, a.a, b.b) per model (rows of (M, -1) tensors), in float64: (3, M)."""
    a, b = a.detach().double(), b.detach().double()
    return torch.stack([(a * b).sum(1), (a * a).sum(1), (b * b).sum(1)])


def _angles_and_ratios(products: torch.Tensor) -> tuple[list, list]:
    """Per model, from _products: metrics.angle_deg(a[k], b[k]) and metrics.norm_ratio(a[k],
    b[k]), all models at once."""
    dot, na, nb = products[0], products[1].sqrt(), products[2].sqrt()
    cos = torch.clamp(dot / (na * nb), -1.0, 1.0)
    angle = torch.where(na * nb == 0, torch.nan, torch.rad2deg(torch.acos(cos)))
    ratio = torch.where(nb == 0, torch.nan, na / nb)
    return angle.tolist(), ratio.tolist()


def _signals(net: StackedNet, x, y, loss_fn, share: float, backprop: bool):
    """Gradients of the models' summed mean losses (times `share`) at every feedback layer's
    output, then at every layer's W, by the rules or by backprop."""
    outs = []
    hooks = [layer.register_forward_hook(lambda _, __, out: outs.append(out))
             for layer in net.layers]
    try:
        with torch.enable_grad():
            if backprop:
                with net.backprop_mode():
                    logits = net(x, per_model=False)
            else:
                logits = net(x, per_model=False)
            loss = per_model_loss(logits, y, loss_fn).sum()
            return torch.autograd.grad(loss * share, outs + [layer.weight for layer in net.layers])
    finally:
        for hook in hooks:
            hook.remove()


def alignment(net: StackedNet, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy,
              chunk: int | None = None) -> list[dict]:
    """Per model {layer: {bw_angle_deg, bw_norm_ratio, err_angle_deg, err_norm_ratio,
    wgrad_angle_deg, wgrad_norm_ratio}}: metrics.feedback_alignment and
    error_signal_alignment of every model at once, on the probe (x, y) shared by all. Run it
    in evaluation mode (each example's error signal its own); `chunk` examples a pass, adding
    up the error signals' products and the weight gradients, so a stack of large models never
    holds every model's activations for the whole probe."""
    m, n = net.models, len(net.layers)
    chunk = chunk or len(y)
    errors = [0.0] * n
    weight_grads = {"rule": [0.0] * n, "bp": [0.0] * n}
    for start in range(0, len(y), chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        share = len(ys) / len(y)  # the probe's mean loss, a pass at a time
        grads = {mode: _signals(net, xs, ys, loss_fn, share, mode == "bp")
                 for mode in ("rule", "bp")}
        for i, layer in enumerate(net.layers):
            errors[i] = errors[i] + _products(layer.per_model_output(grads["rule"][i]),
                                              layer.per_model_output(grads["bp"][i]))
            for mode in weight_grads:
                weight_grads[mode][i] = weight_grads[mode][i] + grads[mode][n + i]
    result = [{} for _ in range(m)]
    for i, (name, layer) in enumerate(zip(net.names, net.layers)):
        columns = {}
        if layer.dfa:  # as metrics.feedback_alignment: a DFA B has no W of its shape
            columns["bw_angle_deg"] = columns["bw_norm_ratio"] = [math.nan] * m
        else:  # bp models' B is W: angle 0, as metrics.feedback_alignment gives
            columns["bw_angle_deg"], columns["bw_norm_ratio"] = _angles_and_ratios(_products(
                layer.effective_feedback().reshape(m, -1), layer.weight.reshape(m, -1)))
        columns["err_angle_deg"], columns["err_norm_ratio"] = _angles_and_ratios(errors[i])
        columns["wgrad_angle_deg"], columns["wgrad_norm_ratio"] = _angles_and_ratios(_products(
            weight_grads["rule"][i].reshape(m, -1), weight_grads["bp"][i].reshape(m, -1)))
        for k in range(m):
            result[k][name] = {key: values[k] for key, values in columns.items()}
    return result
