"""SGD and Adam for stacked networks: torch.optim.SGD's and Adam's arithmetic (momentum, L2
weight decay) on every parameter viewed as (M, -1), so each model may have its own learning
rate, momentum and weight decay (a float for all, or M values), and per-layer scales through
param groups (StackedNet.param_groups). In float64 each model's slice follows the single
optimizer's run to rounding (tests/test_stacked_api.py holds them to torch.optim).

`models=` (M booleans) restricts an optimizer to some models, so a stack may train some with
SGD and others with Adam (two optimizers over the same parameters): the other models' slices
are left exactly as they are. A parameter that only some models train (Kolen-Pollack's B in a
stack of mixed rules) says which itself, and only those slices move.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


def _values(value) -> list[float]:
    """A hyperparameter's values on the host (for decisions made once per step)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    return t.reshape(-1).tolist()


class _StackedOptimizer(Optimizer):
    _per_model_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, models=None):
        super().__init__(params, defaults)
        self.model_mask = None if models is None else \
            torch.as_tensor(models, dtype=torch.bool).cpu()
        self._kept_models: dict = {}  # parameter -> _kept(parameter)
        # (group index, key, dtype, device) -> (the value it was made from, its (M, 1) column):
        # a hyperparameter goes to the device once, not at every step (and never inside a CUDA
        # graph's capture); setting group[key] to a new value makes a new column
        self._columns: dict = {}

    def _models(self, group: dict, p: torch.Tensor) -> int:
        """How many models p stacks (1 when every value and mask is one for all)."""
        for value in [group[k] for k in self._per_model_keys] + [
                self.model_mask, getattr(p, "_soap_cuda_models", None)]:
            if value is not None and torch.as_tensor(value).dim() == 1:
                return len(value)
        return 1

    def _column(self, group: dict, key: str, like: torch.Tensor, models: int) -> torch.Tensor:
        """group[key] as (M, 1) values in `like`'s dtype on its device: one per model, or one
        for all; made once per value."""
        value = group[key]
        cache_key = (id(group), key, like.dtype, like.device, models)
        cached = self._columns.get(cache_key)
        if cached is not None and cached[0] is value:
            return cached[1]
        if like.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"stacked optimizer: '{key}' has a new value inside a CUDA graph "
                               f"capture, which would not see it again; set it before, as a "
                               f"device tensor changed in place to vary it between replays")
        t = torch.as_tensor(value, dtype=torch.float64, device=like.device)
        column = t.to(like.dtype).expand(models).reshape(-1, 1) if t.dim() == 0 else \
            t.to(like.dtype).view(-1, 1)
        self._columns[cache_key] = (value, column)
        return column

    def _host(self, group: dict, key: str) -> list[float]:
        """group[key]'s values on the host, read once per value (decisions made per step)."""
        value = group[key]
        cached = self._columns.get((id(group), key, "host"))
        if cached is not None and cached[0] is value:
            return cached[1]
        values = _values(value)
        self._columns[(id(group), key, "host")] = (value, values)
        return values

    def _kept(self, p: torch.Tensor) -> torch.Tensor | None:
        """The models whose slice of p this optimizer leaves as it is (indices on p's device),
        None when it moves them all; worked out once per parameter (the masks are fixed)."""
        if p not in self._kept_models:
            mask = self.model_mask
            own = getattr(p, "_soap_cuda_models", None)
            if own is not None:
                own = own.cpu()
                mask = own if mask is None else mask & own
            kept = None if mask is None or bool(mask.all()) else \
                (~mask).nonzero().flatten().to(p.device)
            self._kept_models[p] = kept
        return self._kept_models[p]

    def _move(self, p: torch.Tensor, flat: torch.Tensor, direction: torch.Tensor,
              neg_lr: torch.Tensor) -> None:
        """p (viewed as `flat`) += neg_lr * direction, in one pass, then the slices of the
        models it does not train put back as they were (whatever their direction held)."""
        kept = self._kept(p)
        saved = None if kept is None else flat.index_select(0, kept)
        flat.addcmul_(direction, neg_lr)
        if kept is not None:
            flat.index_copy_(0, kept, saved)

    def _grads(self, group: dict):
        """(p, flat p (M, -1), its gradient with weight decay, M) for every p with a grad."""
        decay = any(w != 0 for w in self._host(group, "weight_decay"))
        for p in group["params"]:
            if p.grad is None:
                continue
            models = self._models(group, p)
            flat = p.view(models, -1)
            grad = p.grad.reshape(flat.shape)
            if decay:
                grad = grad + self._column(group, "weight_decay", flat, models) * flat
            yield p, flat, grad, models

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss


class SGD(_StackedOptimizer):
    """torch.optim.SGD (momentum, weight decay; no dampening or Nesterov) per model."""
    _per_model_keys = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, models=None):
        if min(_values(lr)) < 0 or min(_values(momentum)) < 0 or min(_values(weight_decay)) < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
                         models)

    def _step_group(self, group: dict) -> None:
        momentum = self._host(group, "momentum")
        any_momentum = any(m != 0 for m in momentum)
        for p, flat, grad, models in self._grads(group):
            direction = grad
            if any_momentum:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(
                        self._column(group, "momentum", flat, models)).add_(grad)
                direction = state["momentum_buffer"]
                if not all(m != 0 for m in momentum):  # models without momentum: the gradient
                    moving = self._column(group, "momentum", flat, models) != 0
                    direction = torch.where(moving, direction, grad)
            self._move(p, flat, direction, -self._column(group, "lr", flat, models))


class Adam(_StackedOptimizer):
    """torch.optim.Adam (L2 weight decay, no amsgrad) per model."""
    _per_model_keys = ("lr", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 models=None, capturable: bool = False):
        if min(_values(lr)) < 0 or min(_values(weight_decay)) < 0 or eps < 0 or \
                not all(0 <= b < 1 for b in betas):
            raise ValueError("lr, eps and weight_decay must be >= 0 and betas in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, capturable=capturable), models)

    def _step_group(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        # capturable (as torch.optim.Adam's): the step count and bias corrections on the
        # device, so a CUDA graph's replays see them advance
        capturable = group.get("capturable", False)
        for p, flat, grad, models in self._grads(group):
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float64, device=p.device) \
                    if capturable else 0
                state["exp_avg"] = torch.zeros_like(grad)
                state["exp_avg_sq"] = torch.zeros_like(grad)
            if capturable:
                state["step"].add_(1)
            else:
                state["step"] += 1
            step = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if capturable:
                bias_correction1 = (1 - torch.pow(beta1, step)).to(flat.dtype)
                bias_correction2_sqrt = (1 - torch.pow(beta2, step)).sqrt().to(flat.dtype)
            else:
                bias_correction1 = 1 - beta1 ** step
                bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
            neg_lr = -self._column(group, "lr", flat, models) * (1 / bias_correction1)
            self._move(p, flat, exp_avg / denom, neg_lr)
