"""A sweep's runs as one stacked model (soap_cuda.stacked): the runs that share an
architecture, data and schedule train together, every weight, bias, feedback matrix and
optimizer state carrying a leading model dimension, each layer of all the models one batched op.

Each model is its own run: it is built exactly as `train()` builds it (same seed, same
initialisation and feedback matrices), reads its own data order, has its own rule, learning
rate, per-layer learning-rate scales, momentum, weight decay or Adam state, and writes the same
records to its own file; in float64 its curves equal the sequential run's to rounding. A model
whose loss stops being finite is recorded as diverged, zeroed and frozen; the others go on.

Batchable: the MLP, LeNet-5 and ResNet-20 with every rule and SGD or Adam (an SGD and an Adam
model share a stack: two stacked optimizers, each moving its own models' slices). DFA models,
whose B have the network's output size as rows, stack with each other only, and so do SOAP
models (their steps taken by soap_cuda.stacked.SOAP). Only SOAP runs with per-layer
learning-rate scales train one at a time (`train()`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import soap_cuda

from soap_cuda import stacked

from .config import TrainConfig
from .data import Dataset
from .models import build_conv, build_mlp
from .optimizers import SOAP_H
from .train import (EPOCH_ORDER, CheckpointClock, PendingLosses, _epoch_order,
                    _save_checkpoint, _Writer, aligns_at, diverged_by_loss, diverged_eval,
                    eval_subsets, final_record, run_environment)

BATCHED_RULES = ("bp", "fa", "sign", "rescaled_sign", "scaled_sign", "random_sign",
                 "kolen_pollack", "dfa", "soap")
BATCHED_OPTIMIZERS = ("sgd", "adam")
CONV_MODELS = ("lenet", "resnet20")
# settings a model may have of its own inside one batch; every other TrainConfig field is shared
PER_MODEL_FIELDS = ("rule", "lr", "optimizer", "seed", "layer_lr_scale", "label", "momentum",
                    "weight_decay")  # SGD and Adam models share a stack


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




def build_stack(cfgs: list[TrainConfig], data: Dataset) -> stacked.StackedNet:
    """Each run's model built as train() builds it (its seed, its rule), stacked."""
    device = data.x_train.device
    models = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        if cfg.model == "mlp":
            models.append(build_mlp(data.in_features, cfg.hidden, data.num_classes, cfg.rule,
                                    cfg.sync_every, cfg.activation, device, cfg.sync_at_start))
        else:
            models.append(build_conv(cfg.model, data.image_shape, data.num_classes, cfg.rule,
                                     cfg.sync_every, device, cfg.sync_at_start))
    return stacked.stack(models)


def make_optimizers(cfgs: list[TrainConfig], net: stacked.StackedNet,
                    capturable: bool = False) -> list:
    """The runs' optimizers over the stack: SOAP for a SOAP stack, else one stacked SGD for the
    SGD models and one stacked Adam for the Adam models, with make_optimizer's learning rates
    (the gain-matched runs' per-layer scales in param groups); capturable: Adam's step count
    on the device (a CUDA graph steps it)."""
    if cfgs[0].rule == "soap":  # group_key keeps SOAP models among themselves
        return [stacked.SOAP(net, [c.lr for c in cfgs], h=SOAP_H)]
    lrs = [c.lr for c in cfgs]
    scales = {name: [float((c.layer_lr_scale or {}).get(name, 1.0)) for c in cfgs]
              for name in net.names} if any(c.layer_lr_scale for c in cfgs) else None
    decay = [c.weight_decay for c in cfgs]
    opts = []
    for kind in ("sgd", "adam"):
        mine = [c.optimizer == kind for c in cfgs]
        if not any(mine):
            continue
        groups = net.param_groups(lrs, scales)
        models = None if all(mine) else mine
        opts.append(stacked.SGD(groups, lr=lrs, momentum=[c.momentum for c in cfgs],
                                weight_decay=decay, models=models) if kind == "sgd" else
                    stacked.Adam(groups, lr=lrs, weight_decay=decay, models=models,
                                 capturable=capturable))
    return opts


def _passes(net: stacked.StackedNet, device) -> tuple[int, int]:
    """(examples per evaluation pass, per alignment-probe pass). An MLP's are small: whole
    splits. Conv models x M: a CPU is fastest with passes that stay in its caches (256 LeNet
    images: 0.56 s for 1,000 examples of 8 models, 0.79 s at 512); a probe pass is kept for a
    backward (a ResNet-20 holds ~3 MB per image, so 2,048 images ~6 GB)."""
    if not any(isinstance(layer, stacked.layers.StackedConv) for layer in net.layers):
        return 8192, 1 << 30
    cpu = device.type == "cpu"
    return max(1, (256 if cpu else 8192) // net.models), \
        max(1, (256 if cpu else 2048) // net.models)


STACK_CHECKPOINT_VERSION = 2


def graphs_by_default(device) -> bool:
    """Whether a stack steps through graphed_step when not told: on CUDA, where its small steps
    are bound by kernel launches."""
    return torch.device(device).type == "cuda"


def train_batched(cfgs: list[TrainConfig], out_paths: list, data: Dataset,
                  on_step=None, checkpoint_path=None,
                  checkpoint_every_evals: int | None = None,
                  graphed: bool | None = None) -> list[list[dict]]:
    """Train the runs `cfgs` (one group_key) as one stacked model; write each run's records to
    its path as `train()` would, and return them. `on_step(examples)` after each step, with
    the examples of every model in the stack.

    With `checkpoint_path`, the whole stack (every model's tensors, optimizer state and feedback
    sync counters, the position, the records, the RNG) is saved there atomically as `train()`
    saves a run: at the first evaluation CHECKPOINT_INTERVAL_S or more after the last one (or
    every `checkpoint_every_evals` evaluations); when the file exists, training resumes from it
    exactly, and rewrites the runs' files from its records.

    graphed: each step through soap_cuda.graphed_step (the stack's schedules on the device; on
    CUDA one captured graph per stack, replayed every step of the full batch size, captured
    again after a learning-rate drop); the same records. None (the default): on CUDA. SOAP
    stacks step eagerly."""
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

    net = build_stack(cfgs, data)
    if graphed is None:
        graphed = graphs_by_default(device)
    opts = make_optimizers(cfgs, net, capturable=graphed and device.type == "cuda")
    soap = isinstance(opts[0], stacked.SOAP)
    graphed = graphed and not soap
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in opts if not soap]
    eval_chunk, probe_chunk = _passes(net, device)
    records = [[{"kind": "config", "config": c.to_dict(), "data": data.summary(),
                 **run_environment(device), "batched": {"models": m_count}}] for c in cfgs]
    alive = [True] * m_count
    diverged = [False] * m_count
    loss_sum, loss_n = [0.0] * m_count, [0] * m_count
    pos = {"examples": 0, "step": 0, "epoch": 0, "batch": 0, "evals": 0, "next_eval": 0,
           "order": EPOCH_ORDER}
    elapsed0 = 0.0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    tasks = [(c.to_dict(), str(p)) for c, p in zip(cfgs, out_paths)]
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("version") != STACK_CHECKPOINT_VERSION or state["tasks"] != tasks:
            raise RuntimeError(f"{ckpt}: a stacked checkpoint of other runs or settings")
        net.load_state_dict(state["net"])  # in place: the optimizers hold these tensors
        for opt, opt_state in zip(opts, state["optimizers"]):
            opt.load_state_dict(opt_state)
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        records, pos, alive, diverged = (state[k] for k in ("records", "position", "alive",
                                                            "diverged"))
        pos.setdefault("order", "randperm")  # a checkpoint from before the Philox order
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
            "version": STACK_CHECKPOINT_VERSION, "tasks": tasks,
            # the schedules (examples seen, syncs) ride in the stacked layers' extra state
            "net": net.state_dict(), "optimizers": [opt.state_dict() for opt in opts],
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
            train_loss, train_acc = stacked.loss_and_accuracy(net, on.x_train, on.y_train,
                                                              eval_chunk)
            test_loss, test_acc = stacked.loss_and_accuracy(net, on.x_test, on.y_test,
                                                            eval_chunk)
            if on.has_validation:
                val_loss, val_acc = stacked.loss_and_accuracy(net, on.x_val, on.y_val,
                                                              eval_chunk)
            align = final or aligns_at(pos["evals"], cfg0.align_every)
            finite = [math.isfinite(train_loss[k]) and math.isfinite(test_loss[k])
                      for k in range(m_count)]
            layers = stacked.alignment(net, *probe, chunk=probe_chunk) if align else None
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
    pending = PendingLosses()

    def flush() -> None:
        for k, value, take, examples, step in pending.read(lambda k: alive[k]):
            if not math.isfinite(value):
                diverged[k] = True
                finish([k], at=(examples, step))
                continue
            loss_sum[k] += value * take
            loss_n[k] += take

    if pos["evals"] == 0:
        log_eval(list(range(m_count)))
        pos["evals"], pos["next_eval"] = 1, eval_every
    x_all, y_all = data.x_train, data.y_train
    applied_factor = None  # the learning-rate factor the optimizers' groups hold
    graphed_step = None  # made at the first step (it needs a batch's shapes)

    def stack_loss(out, yb):
        losses = stacked.per_model_loss(out, yb)
        # dead models' slices compute on zeros and their losses stay out of the sum
        return torch.where(live, losses, torch.zeros_like(losses)).sum(), losses

    while pos["examples"] < budget and any(alive):
        orders = torch.stack([_epoch_order(c.seed, pos["epoch"], n, device, pos["order"])
                              for c in cfgs])
        while pos["batch"] * cfg0.batch_size < n and pos["examples"] < budget and any(alive):
            start = pos["batch"] * cfg0.batch_size
            take = min(cfg0.batch_size, n - start, budget - pos["examples"])
            idx = orders[:, start:start + take]  # (M, take): each model's own examples
            factor = 0.1 ** sum(pos["examples"] >= f * budget for f in cfg0.lr_drops)
            xb, yb = x_all[idx], y_all[idx]
            if not soap and factor != applied_factor:  # a new value only at a drop
                for opt, lrs in zip(opts, base_lrs):
                    for group, lr in zip(opt.param_groups, lrs):
                        group["lr"] = lr * factor
                if graphed_step is not None:
                    graphed_step.reset_graph()  # a captured step holds the old rates
                applied_factor = factor
            if graphed:
                if graphed_step is None:
                    graphed_step = soap_cuda.graphed_step(net, stack_loss, opts, (xb, yb))
                _, losses = graphed_step(xb, yb)
            else:
                for p in net.parameters():
                    p.grad = None
                # the net's layers count the batch and sync the sign rules' B when due
                total, losses = stack_loss(net(xb, per_model=True), yb)
                total.backward()
                if soap:
                    opts[0].step(xb, yb, losses.detach(), factor)
                else:
                    for opt in opts:
                        opt.step()
            pos["batch"] += 1
            pos["step"] += 1
            pos["examples"] += take
            if pending.add(losses.detach(), take, pos["examples"], pos["step"]):
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
    if graphed_step is not None:
        graphed_step.close()
    return records
