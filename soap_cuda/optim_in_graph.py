"""Optimizer steps that torch.compile traces into a training step's graph (graphed_step with
compile=True), so forward, backward and the update are one graph with no break.

torch.optim's own `step()` cannot be traced there: its decorator calls
`torch._dynamo.graph_break()`, and dynamo refuses the optimizer's `_init_group` while the
parameters' `.grad` are pending writes of the same graph (the traced backward's). So for the
optimizers a step meets most, this module gives the same update in a form dynamo traces: the
parameters, gradients and state gathered here, then torch's own functional `sgd` / `adam` (the
arithmetic of `step()` itself), and soap_cuda.stacked's optimizers as they are. Any other
optimizer (or option: fused, amsgrad with a scaler, sparse gradients) steps after the graph.

One difference from eager is repaired: compiled, torch's Adam computes its bias corrections from
the float32 step tensor, eager from the step as a Python float; `prepare` keeps a
non-capturable group's step count as a float64 tensor, so both give the eager numbers. State
that a first step makes (momentum buffers, Adam's moments) is made inside the graph as eager
makes it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.optim.adam import adam as _functional_adam
from torch.optim.sgd import sgd as _functional_sgd

_TRACED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def in_graph_step(optimizer) -> Callable[[], None] | None:
    """A function doing `optimizer.step()` that dynamo traces with fullgraph=True, or None where
    only `optimizer.step()` itself will do."""
    from .stacked.optim import _StackedOptimizer
    if isinstance(optimizer, _StackedOptimizer):
        return optimizer.step  # no _init_group and no graph break of its own
    kind = type(optimizer)
    if kind not in _TRACED or getattr(optimizer, "grad_scale", None) is not None or \
            getattr(optimizer, "found_inf", None) is not None:
        return None
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("differentiable"):
            return None
    if kind is torch.optim.SGD:
        return lambda: _sgd_step(optimizer)
    # read here, not in the trace: dynamo shows every group as capturable=True to the graph
    capturable = [bool(group["capturable"]) for group in optimizer.param_groups]
    return lambda: _adam_step(optimizer, capturable)


def prepare(optimizer) -> None:
    """Before a traced step: a non-capturable Adam's step counts become float64 tensors (what
    the eager step's bias corrections are computed in)."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return
    for group in optimizer.param_groups:
        if group["capturable"]:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and state["step"].dtype != torch.float64:
                state["step"] = state["step"].to(torch.float64)


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives a capturable step count."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@torch.no_grad()
def _sgd_step(optimizer) -> None:
    for group in optimizer.param_groups:
        params, grads, buffers = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if group["momentum"] != 0:
                buffers.append(optimizer.state[p].get("momentum_buffer"))
        _functional_sgd(params, grads, buffers, weight_decay=group["weight_decay"],
                        momentum=group["momentum"], lr=group["lr"],
                        dampening=group["dampening"], nesterov=group["nesterov"],
                        maximize=group["maximize"], has_sparse_grad=False,
                        foreach=group["foreach"], fused=False)
        if group["momentum"] != 0:  # a first step made the buffers (as SGD.step keeps them)
            for p, buffer in zip(params, buffers):
                optimizer.state[p]["momentum_buffer"] = buffer


@torch.no_grad()
def _adam_step(optimizer, capturable: list[bool]) -> None:
    for group, group_capturable in zip(optimizer.param_groups, capturable):
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            if len(state) == 0:  # a first step: the state Adam._init_group makes
                state["step"] = torch.zeros((), dtype=_scalar_dtype(), device=p.device) \
                    if group_capturable else torch.zeros((), dtype=torch.float64)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
            has_complex |= torch.is_complex(p)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        _functional_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                         amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1,
                         beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                         eps=group["eps"], maximize=group["maximize"],
                         foreach=group["foreach"], capturable=group["capturable"],
                         differentiable=False, fused=False,
                         decoupled_weight_decay=group.get("decoupled_weight_decay",
                                                          type(optimizer) is torch.optim.AdamW))
