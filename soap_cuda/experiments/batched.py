"""Many training runs as one stacked model: the runs of a sweep that share an MLP architecture,
data and schedule train together, every weight, bias, feedback matrix and optimizer state
carrying a leading model dimension. Each layer of all the models is one `fa_linear_stacked`
call (a batched GEMM), each feedback sync one `feedback_sync_` call for every model and layer.

Each model is its own run: it is built exactly as `train()` builds it (same seed, same
initialisation and feedback matrices), reads its own data order, has its own rule, learning
rate, per-layer learning-rate scales, momentum, weight decay or Adam state, and writes the same
records to its own file; in float64 its curves equal the sequential run's to rounding. A model
whose loss stops being finite is recorded as diverged, zeroed and frozen; the others go on.

Batchable: `--model mlp` with the rules of BATCHED_RULES and SGD or Adam (a Kolen-Pollack
model's B is a parameter of its own, given W's gradient, as in FALinear; DFA models, whose B
have the network's output size as rows, batch with each other only, and their projection of
the output error is one batched GEMM for every model and layer; SOAP models batch with each
other only, their steps taken by batched_soap.StackedSOAP). The conv models (LeNet-5,
ResNet-20) stack as batched_conv.StackedConvNet, every rule included (a SOAP conv step measures
its losses as SOAP's closure path does). Only SOAP runs with per-layer learning-rate scales
train one at a time (`train()`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from soap_cuda import feedback as fb

from .config import TrainConfig
from .data import Dataset
from .models import ACTIVATIONS, build_mlp
from .batched_conv import StackedConvNet
from .batched_dfa import dfa_output
from .batched_soap import StackedSOAP
from .stacked_rules import StackedRules, sync_proxies
from .train import (CheckpointClock, _epoch_order, _save_checkpoint, _Writer, aligns_at,
                    diverged_by_loss, diverged_eval, eval_subsets, final_record,
                    run_environment)

BATCHED_RULES = ("bp", "fa", "sign", "rescaled_sign", "scaled_sign", "random_sign",
                 "kolen_pollack", "dfa", "soap")
BATCHED_OPTIMIZERS = ("sgd", "adam")
CONV_MODELS = ("lenet", "resnet20")  # stacked by batched_conv.StackedConvNet
# settings a model may have of its own inside one batch; every other TrainConfig field is shared
PER_MODEL_FIELDS = ("rule", "lr", "optimizer", "seed", "layer_lr_scale", "label", "momentum",
                    "weight_decay")  # SGD and Adam models share a stack
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as make_optimizer uses
FLUSH_STEPS = 64  # steps whose losses may wait on the device before the host reads them


def batchable(cfg: TrainConfig) -> bool:
    if cfg.rule not in BATCHED_RULES or cfg.optimizer not in BATCHED_OPTIMIZERS or \
            cfg.model not in ("mlp", *CONV_MODELS):
        return False
    # SOAP takes one learning rate for the whole model: per-layer scales stay sequential
    return not (cfg.rule == "soap" and cfg.layer_lr_scale)


def group_key(cfg: TrainConfig) -> tuple:
    """Runs with equal keys can share one stacked model."""
    d = cfg.to_dict()
    return tuple((k, repr(v)) for k, v in sorted(d.items()) if k not in PER_MODEL_FIELDS) + \
        (("dfa", cfg.rule == "dfa"), ("soap", cfg.rule == "soap"))


@dataclass
class _Layer:
    weight: torch.Tensor  # (M, out, in), leaf
    bias: torch.Tensor    # (M, out), leaf
    b_matrix: torch.Tensor  # (M, out, in)
    proxies: list  # per model: what feedback.sync_layers needs to sync that model's layer


class StackedMLP(StackedRules):
    """The models of one batch, stacked; built from `build_mlp` per config, so each slice starts
    exactly where its sequential run does."""

    def __init__(self, cfgs: list[TrainConfig], data: Dataset):
        device = data.x_train.device
        models = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            models.append(build_mlp(data.in_features, cfg.hidden, data.num_classes, cfg.rule,
                                    cfg.sync_every, cfg.activation, device, cfg.sync_at_start))
        self.names = [name for name, _ in models[0].named_children() if name.startswith("fc")]
        self.activation = ACTIVATIONS[cfgs[0].activation]()
        self.m = len(models)
        self.rules = [cfg.rule for cfg in cfgs]
        self.dfa = self.rules[0] == "dfa"  # group_key keeps DFA models among themselves
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for name in self.names:
                src = [getattr(m, name) for m in models]
                weight = torch.stack([s.weight for s in src]).requires_grad_()
                bias = torch.stack([s.bias for s in src]).requires_grad_()
                b_matrix = torch.stack([s.b_matrix for s in src])
                self.layers.append(_Layer(weight, bias, b_matrix,
                                          sync_proxies(weight, b_matrix, src)))
        self._init_rules(device)
        self.eval_chunk = 8192  # examples per evaluation pass
        self.probe_chunk = 1 << 30  # the alignment probe in one pass: an MLP's is small

    def parameters(self) -> list[torch.Tensor]:
        """Per layer weight and bias (in FALinear's order), then b_matrix if any model learns
        it (Kolen-Pollack)."""
        return [t for layer in self.layers
                for t in ((layer.weight, layer.bias, layer.b_matrix) if self.learns_b
                          else (layer.weight, layer.bias))]

    def param_specs(self) -> list[tuple]:
        """(layer name, is B) per parameters() entry: what its learning rate is."""
        return [(name, is_b) for name in self.names
                for is_b in ((False, False, True) if self.learns_b else (False, False))]

    def train(self, mode: bool = True) -> None:
        """Nothing in an MLP computes differently in evaluation."""

    def per_model(self, t: torch.Tensor, output: bool = False) -> torch.Tensor:
        """A stacked parameter or a layer's output (M, N, out), as (M, -1)."""
        return t.reshape(t.shape[0], -1)

    def forward(self, x: torch.Tensor, backprop: bool = False, keep=None) -> torch.Tensor:
        """x (M, N, in), or (N, in) shared by every model -> logits (M, N, classes); `keep`
        collects each layer's output. `backprop`: every model's error through W."""
        dfa = self.dfa and not backprop
        taps = []  # DFA: each layer's input, to receive its error from the output's
        h = x
        for i, layer in enumerate(self.layers):
            b = layer.weight.detach() if backprop or dfa else layer.b_matrix
            if dfa and h.requires_grad:
                taps.append((h, layer.b_matrix))
                h = h.detach()  # no error from layer to layer: dfa_output delivers it
            if h.dim() == 2:  # one input for all: one GEMM against every model's W at once
                h = self._shared_input_layer(h, layer, b)
            else:
                h = torch.ops.soap_cuda.fa_linear_stacked(h, layer.weight, layer.bias, b)
            if keep is not None:
                keep.append(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        if taps:
            h = dfa_output(h, [(t, b, True) for t, b in taps])
        return h

    def logits_at(self, x: torch.Tensor, weights: list[tuple]) -> torch.Tensor:
        """x (M, N, in) -> logits (M, N, classes) with [(weight, bias)] per layer in place of
        the models' own (no feedback, no autograd: SOAP's shifted forward passes)."""
        h = x
        for i, (weight, bias) in enumerate(weights):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if i < len(weights) - 1:
                h = self.activation(h)
        return h

    def _shared_input_layer(self, x, layer, b):
        """fa_linear_stacked of x expanded to every model, without materialising the copies:
        the models' rows of W side by side make one (N, in) x (in, M * out) GEMM."""
        m, out, k = layer.weight.shape
        if x.requires_grad:  # the probes' first layer input never is; keep the op's autograd
            return torch.ops.soap_cuda.fa_linear_stacked(x.expand(m, *x.shape), layer.weight,
                                                         layer.bias, b)
        w = layer.weight.reshape(m * out, k)
        y = torch.addmm(layer.bias.reshape(m * out), x, w.t())  # (N, M * out)
        return y.view(x.shape[0], m, out).transpose(0, 1)


def _per_model_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each model over its rows: logits (M, N, C), y (M, N) -> (M,)."""
    m, n, c = logits.shape
    return F.cross_entropy(logits.reshape(m * n, c), y.reshape(m * n),
                           reduction="none").view(m, n).mean(1)


class _Optimizer:
    """torch.optim.SGD (momentum, weight decay) or Adam, per model (a stack may mix them), one
    learning rate per model and layer: the same arithmetic as the single-tensor
    implementations, on stacked tensors."""

    def __init__(self, kinds: list[str], params: list[torch.Tensor], lrs: torch.Tensor,
                 momentum: list[float], weight_decay: list[float]):
        self.params = params
        self.lrs = lrs  # (len(params), M): param i of model m
        device = params[0].device
        self.momentum = torch.tensor(momentum, device=device)
        self.weight_decay = torch.tensor(weight_decay, device=device)
        # decided on the host once: a device-side test per step would stall a GPU every step
        self.any_decay = any(w != 0 for w in weight_decay)
        sgd = [k == "sgd" for k in kinds]
        self.any_sgd, self.any_adam = any(sgd), not all(sgd)
        self.adam_models = torch.tensor([not s for s in sgd], device=device).view(-1, 1)
        self.any_momentum = any(m != 0 for m, s in zip(momentum, sgd) if s)
        self.all_momentum = all(m != 0 for m in momentum)
        self.state = [{} for _ in params]  # per parameter: "momentum", "exp_avg", "exp_avg_sq"
        self.steps = 0

    def _per_model(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(-1, 1)

    def _sgd_direction(self, i: int, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if not self.any_momentum:
            return grad
        mom, state = self._per_model(self.momentum, p), self.state[i]
        if "momentum" not in state:
            state["momentum"] = grad.clone()
        else:
            state["momentum"].mul_(mom).add_(grad)
        return state["momentum"] if self.all_momentum else \
            torch.where(mom != 0, state["momentum"], grad)

    def _adam_direction(self, i: int, grad: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Adam's exp_avg / denom, and the learning rate's factor 1 / bias_correction1."""
        beta1, beta2 = ADAM_BETAS
        state = self.state[i]
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        return exp_avg / denom, 1 / bias_correction1

    @torch.no_grad()
    def step(self, lr_factor: float) -> None:
        """Every parameter viewed as (M, -1) (model-major in every stacked layout), so one
        column of per-model values scales each model's slice."""
        self.steps += 1
        for i, param in enumerate(self.params):
            p = param.view(self.lrs.shape[1], -1)
            grad = param.grad.reshape(p.shape)
            if self.any_decay:
                grad = grad + self._per_model(self.weight_decay, p) * p
            neg_lr = -self._per_model(self.lrs[i] * lr_factor, p)
            if not self.any_adam:
                p.addcmul_(self._sgd_direction(i, p, grad), neg_lr)  # p - lr * grad in one pass
                continue
            adam, scale = self._adam_direction(i, grad)
            if not self.any_sgd:
                p.addcmul_(adam, neg_lr * scale)
                continue
            # a mixed stack: each model's slice takes its own optimizer's update
            p.addcmul_(torch.where(self.adam_models, adam, self._sgd_direction(i, p, grad)),
                       torch.where(self.adam_models, neg_lr * scale, neg_lr))


def _lr_table(cfgs: list[TrainConfig], specs: list[tuple], device) -> torch.Tensor:
    """(params, M): the learning rate of each of a stacked net's parameters(), per model, from
    its param_specs() (FA layer name or None, is B): the gain-matched per-layer scales as
    make_optimizer's param groups apply them (other parameters at the base rate); a B row is
    zero for the models whose B is not a parameter."""
    rows = []
    for name, is_b in specs:
        lrs = [cfg.lr * float((cfg.layer_lr_scale or {}).get(name, 1.0)) if name else cfg.lr
               for cfg in cfgs]
        rows.append([lr if cfg.rule == "kolen_pollack" else 0.0 for lr, cfg in zip(lrs, cfgs)]
                    if is_b else lrs)
    return torch.tensor(rows, dtype=torch.float64, device=device)


@torch.no_grad()
def _loss_acc(net, x: torch.Tensor, y: torch.Tensor):
    m, chunk = len(net.rules), net.eval_chunk
    total = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.int64, device=x.device)
    for i in range(0, len(y), chunk):
        xs, ys = x[i:i + chunk], y[i:i + chunk]
        out = net.forward(xs)
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


def _alignment(net, probe) -> list[dict]:
    """Per model: metrics.feedback_alignment and error_signal_alignment, for all models at once
    (error signals and weight gradients by each model's rule, then by backprop). The probe runs
    in passes of net.probe_chunk examples (evaluation mode: every example's error signal is its
    own), adding up the error signals' products and the weight gradients, so a stack of large
    models never holds every model's activations for the whole probe."""
    x, y = probe
    m, n = len(net.rules), len(net.layers)
    weights = [layer.weight for layer in net.layers]
    errors = [0.0] * n
    weight_grads = {"rule": [0.0] * n, "bp": [0.0] * n}
    for start in range(0, len(y), net.probe_chunk):
        xs, ys = x[start:start + net.probe_chunk], y[start:start + net.probe_chunk]
        share = len(ys) / len(y)  # the probe's mean loss, a pass at a time
        grads = {}
        for mode in ("rule", "bp"):
            outs = []
            with torch.enable_grad():
                logits = net.forward(xs, backprop=mode == "bp", keep=outs)
                loss = _per_model_loss(logits, ys.unsqueeze(0).expand(m, *ys.shape)).sum()
                grads[mode] = torch.autograd.grad(loss * share, outs + weights)
        for i in range(n):
            errors[i] = errors[i] + _products(net.per_model(grads["rule"][i], output=True),
                                              net.per_model(grads["bp"][i], output=True))
            for mode in weight_grads:
                weight_grads[mode][i] = weight_grads[mode][i] + grads[mode][n + i]
    result = [{} for _ in range(m)]
    for i, (name, layer) in enumerate(zip(net.names, net.layers)):
        # bp models hold B = W, so their B-W angle is 0 as metrics.feedback_alignment gives
        columns = {}
        if net.dfa:  # as metrics.feedback_alignment: a DFA B has no W of its shape
            columns["bw_angle_deg"] = columns["bw_norm_ratio"] = [math.nan] * m
        else:
            columns["bw_angle_deg"], columns["bw_norm_ratio"] = _angles_and_ratios(_products(
                net.per_model(layer.b_matrix), net.per_model(layer.weight)))
        columns["err_angle_deg"], columns["err_norm_ratio"] = _angles_and_ratios(errors[i])
        columns["wgrad_angle_deg"], columns["wgrad_norm_ratio"] = _angles_and_ratios(_products(
            net.per_model(weight_grads["rule"][i]), net.per_model(weight_grads["bp"][i])))
        for k in range(m):
            result[k][name] = {key: values[k] for key, values in columns.items()}
    return result


STACK_CHECKPOINT_VERSION = 1


def _net_state(net) -> dict:
    """Every tensor a stacked net trains or keeps (weights, biases, B, batch-norm statistics)."""
    if hasattr(net, "module"):
        return net.module.state_dict()
    return {f"{i}.{k}": getattr(layer, k) for i, layer in enumerate(net.layers)
            for k in ("weight", "bias", "b_matrix")}


def _load_net_state(net, state: dict) -> None:
    with torch.no_grad():  # in place: the optimizer and the sync proxies hold these tensors
        for key, tensor in _net_state(net).items():
            tensor.copy_(state[key])


def _optimizer_state(opt) -> dict:
    if isinstance(opt, StackedSOAP):
        return {}  # SOAP keeps nothing from step to step
    return {"state": opt.state, "steps": opt.steps}


def _load_optimizer_state(opt, state: dict) -> None:
    if state:
        opt.state, opt.steps = state["state"], state["steps"]


def train_batched(cfgs: list[TrainConfig], out_paths: list, data: Dataset,
                  on_step=None, checkpoint_path=None,
                  checkpoint_every_evals: int | None = None) -> list[list[dict]]:
    """Train the runs `cfgs` (one group_key) as one stacked model; write each run's records to
    its path as `train()` would, and return them. `on_step(examples)` after each step, with
    the examples of every model in the stack.

    With `checkpoint_path`, the whole stack (every model's tensors, optimizer state and feedback
    sync counters, the position, the records, the RNG) is saved there atomically as `train()`
    saves a run: at the first evaluation CHECKPOINT_INTERVAL_S or more after the last one (or
    every `checkpoint_every_evals` evaluations); when the file exists, training resumes from it
    exactly, and rewrites the runs' files from its records."""
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or not all(batchable(c) for c in cfgs):
        raise ValueError("train_batched needs batchable runs that share one group_key")
    for cfg in cfgs:
        cfg.validate()
    cfg0 = cfgs[0]
    device = data.x_train.device
    n, m_count = len(data.y_train), len(cfgs)
    budget = int(round(cfg0.epochs * n))
    eval_every = cfg0.eval_every or max(1, n // 20)
    probe = (data.x_train[:cfg0.probe_examples], data.y_train[:cfg0.probe_examples])
    eval_data, final_data = eval_subsets(data, cfg0.eval_examples)

    net = StackedMLP(cfgs, data) if cfg0.model == "mlp" else StackedConvNet(cfgs, data)
    if cfg0.rule == "soap":  # group_key keeps SOAP models among themselves
        opt = StackedSOAP(net, [c.lr for c in cfgs])
    else:
        opt = _Optimizer([c.optimizer for c in cfgs], net.parameters(),
                         _lr_table(cfgs, net.param_specs(), device),
                         [c.momentum for c in cfgs], [c.weight_decay for c in cfgs])
    records = [[{"kind": "config", "config": c.to_dict(), "data": data.summary(),
                 **run_environment(device), "batched": {"models": m_count}}] for c in cfgs]
    alive = [True] * m_count
    diverged = [False] * m_count
    loss_sum, loss_n = [0.0] * m_count, [0] * m_count
    pos = {"examples": 0, "step": 0, "epoch": 0, "batch": 0, "evals": 0, "next_eval": 0,
           "examples_seen": 0}  # examples_seen: the sync schedule's counter, for every model
    elapsed0 = 0.0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    tasks = [(c.to_dict(), str(p)) for c, p in zip(cfgs, out_paths)]
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("version") != STACK_CHECKPOINT_VERSION or state["tasks"] != tasks:
            raise RuntimeError(f"{ckpt}: a stacked checkpoint of other runs or settings")
        _load_net_state(net, state["net"])
        _load_optimizer_state(opt, state["optimizer"])
        for layer, counts in zip(net.layers, state["sync_counts"]):
            for proxy, count in zip(layer.proxies, counts):
                proxy.sync_count = count
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        records, pos, alive, diverged = (state[k] for k in ("records", "position", "alive",
                                                            "diverged"))
        loss_sum, loss_n = state["loss_sum"], state["loss_n"]
        elapsed0 = state["elapsed_s"]
    writers = [_Writer(Path(p) if p is not None else None, r)
               for p, r in zip(out_paths, records)]
    live = torch.tensor(alive, dtype=torch.bool, device=device)  # alive, on the device
    t0 = time.perf_counter() - elapsed0
    clock = CheckpointClock(checkpoint_every_evals)

    def checkpoint() -> None:
        clock.written()
        _save_checkpoint(ckpt, {
            "version": STACK_CHECKPOINT_VERSION, "tasks": tasks, "net": _net_state(net),
            "optimizer": _optimizer_state(opt),
            "sync_counts": [[p.sync_count for p in layer.proxies] for layer in net.layers],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "records": records, "position": dict(pos), "alive": alive, "diverged": diverged,
            "loss_sum": loss_sum, "loss_n": loss_n, "elapsed_s": time.perf_counter() - t0})

    def log_eval(models: list[int], final: bool = False, at: tuple | None = None) -> None:
        """An eval record for each of `models`, at `at` = (examples, step) or now."""
        examples, step = at if at is not None else (pos["examples"], pos["step"])
        on = final_data if final else eval_data
        healthy = [k for k in models if not diverged[k]]
        if healthy:
            net.train(False)  # as train()'s evaluate: batch norm on its running statistics
            train_loss, train_acc = _loss_acc(net, on.x_train, on.y_train)
            test_loss, test_acc = _loss_acc(net, on.x_test, on.y_test)
            if on.has_validation:
                val_loss, val_acc = _loss_acc(net, on.x_val, on.y_val)
            align = final or aligns_at(pos["evals"], cfg0.align_every)
            finite = [math.isfinite(train_loss[k]) and math.isfinite(test_loss[k])
                      for k in range(m_count)]
            layers = _alignment(net, probe) if align else None
            net.train(True)
        for k in models:
            rec = {"kind": "eval", "examples": examples, "step": step, "epoch": examples / n,
                   "batch_loss": loss_sum[k] / loss_n[k] if loss_n[k] else None}
            if diverged[k]:
                rec.update(diverged_eval(on.has_validation))
            else:
                rec.update(train_loss=train_loss[k], train_acc=train_acc[k],
                           test_loss=test_loss[k], test_acc=test_acc[k])
                if on.has_validation:
                    rec.update(val_loss=val_loss[k], val_acc=val_acc[k])
                if layers is not None:
                    rec["layers"] = layers[k] if finite[k] else {
                        name: {key: v for key, v in d.items() if key.startswith("bw_")}
                        for name, d in layers[k].items()}
                else:
                    rec["layers"] = {}
                rec["eval_examples"] = [len(on.y_train), len(on.y_test)]
                if diverged_by_loss(records[k], rec["train_loss"]):
                    rec["diverged"] = True
            rec["wall_s"] = time.perf_counter() - t0
            loss_sum[k], loss_n[k] = 0.0, 0
            records[k].append(rec)
            writers[k].write(rec)

    def finish(models: list[int], at: tuple | None = None) -> None:
        """These models' runs end (budget reached, or diverged at `at`): one final evaluation
        for all of them, then each one's final record."""
        log_eval(models, final=True, at=at)
        for k in models:
            last = records[k][-1]
            dead = diverged[k] or bool(last.get("diverged"))
            fin = final_record(last, dead, time.perf_counter() - t0, records[k])
            records[k].append(fin)
            writers[k].write(fin)
            alive[k] = False
            live[k] = False
            net.freeze(k)

    # Step losses stay on the device until an evaluation (or every FLUSH_STEPS) reads them all
    # at once: no host synchronisation per step. A model whose loss stopped being finite at
    # step s is then recorded as stopped at s, exactly as train() stops it; the steps it took
    # after s (on NaNs, in its own slice) touch no other model and are discarded.
    pending: list[tuple] = []

    def flush() -> None:
        if not pending:
            return
        rows = torch.stack([p[0] for p in pending]).tolist()
        for values, (_, take, examples, step) in zip(rows, pending):
            for k in range(m_count):
                if not alive[k]:
                    continue
                if not math.isfinite(values[k]):
                    diverged[k] = True
                    finish([k], at=(examples, step))
                    continue
                loss_sum[k] += values[k] * take
                loss_n[k] += take
        pending.clear()

    if pos["evals"] == 0:
        log_eval(list(range(m_count)))
        pos["evals"], pos["next_eval"] = 1, eval_every
    x_all, y_all = data.x_train, data.y_train
    sync_models = [k for k, c in enumerate(cfgs) if c.rule in fb.SYNC_RULES]
    while pos["examples"] < budget and any(alive):
        orders = torch.stack([_epoch_order(c.seed, pos["epoch"], n, device) for c in cfgs])
        while pos["batch"] * cfg0.batch_size < n and pos["examples"] < budget and any(alive):
            start = pos["batch"] * cfg0.batch_size
            take = min(cfg0.batch_size, n - start, budget - pos["examples"])
            idx = orders[:, start:start + take]  # (M, take): each model's own examples
            factor = 0.1 ** sum(pos["examples"] >= f * budget for f in cfg0.lr_drops)
            # the sign rules' schedule, as FALinear.forward advances it before computing
            if sync_models and (cfg0.sync_every is not None or cfg0.sync_at_start):
                before = pos["examples_seen"]
                pos["examples_seen"] += take
                first = cfg0.sync_at_start and before == 0
                crossed = cfg0.sync_every is not None and \
                    pos["examples_seen"] // cfg0.sync_every > before // cfg0.sync_every
                if first or crossed:
                    net.sync([k for k in sync_models if alive[k]])
            for p in opt.params:
                p.grad = None
            xb, yb = x_all[idx], y_all[idx]
            losses = _per_model_loss(net.forward(xb), yb)
            # dead models' slices compute on zeros and their losses stay out of the sum
            torch.where(live, losses, torch.zeros_like(losses)).sum().backward()
            if isinstance(opt, StackedSOAP):
                opt.step(xb, yb, losses.detach(), factor)
            else:
                net.give_b_its_gradient()
                opt.step(factor)
            net.copy_bp_weights()
            pos["batch"] += 1
            pos["step"] += 1
            pos["examples"] += take
            pending.append((losses.detach(), take, pos["examples"], pos["step"]))
            if len(pending) >= FLUSH_STEPS:
                flush()
            if on_step is not None:
                on_step(take * m_count)
            if pos["examples"] >= pos["next_eval"] and pos["examples"] < budget:
                flush()
                live_models = [k for k in range(m_count) if alive[k]]
                log_eval(live_models)
                pos["evals"] += 1
                pos["next_eval"] += eval_every
                for k in live_models:
                    if records[k][-1].get("diverged"):
                        diverged[k] = True
                        finish([k])
                if ckpt is not None and clock.due(pos["evals"]):
                    checkpoint()
        if pos["batch"] * cfg0.batch_size >= n:
            pos["epoch"] += 1
            pos["batch"] = 0
    flush()
    finish([k for k in range(m_count) if alive[k]])
    return records
