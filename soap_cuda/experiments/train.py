"""One training run: model (MLP, LeNet-5 or ResNet-20) + feedback rule + optimizer (with an
optional step learning-rate schedule), metrics as JSON lines, exact resume.

Records (one JSON object per line):
  {"kind": "config", ...}   the TrainConfig and the dataset summary
  {"kind": "eval", ...}     at examples 0, every `eval_every` examples, and at the end:
                            train/test loss and accuracy on fixed subsets of `eval_examples`
                            each (the last one on the whole test set; `eval_examples` records
                            the sizes used), and per layer the B-W angle and the error
                            signal's angle and norm ratio against backprop; with a validation
                            split, val loss and accuracy on the whole split, and the test
                            numbers on the whole test set, at every evaluation
  {"kind": "final", ...}    the last eval's numbers plus wall time and whether the run diverged;
                            with a validation split, "best_val": the evaluation of highest
                            validation accuracy and its test error (the published tables'
                            "best validation model's test error")
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import soap_cuda

from .config import TrainConfig
from .data import Dataset, load_dataset
from .models import build_conv, build_mlp
from .optimizers import make_optimizer
from ..feedback import stream_seed

CHECKPOINT_VERSION = 1
# A run counts as diverged (and stops) when its loss is not finite or exceeds this multiple of
# its initial training loss: far worse than chance, it is not coming back within the budget.
DIVERGE_FACTOR = 10.0
# seconds between checkpoints (the environment variable: tests, very short runs)
CHECKPOINT_INTERVAL_S = float(os.environ.get("SOAP_CUDA_CHECKPOINT_INTERVAL_S", 30.0))
FLUSH_STEPS = 64  # steps whose losses may wait on the device before the host reads them


def run_environment(device: torch.device) -> dict:
    """What a run ran on, for its config record: the device it trained on (the GPU's name if
    one) and, apart from it, how soap_cuda was built (CUDA kernels may be built and unused)."""
    device = torch.device(device)
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    build = {"cuda": "native, CPU and CUDA kernels", "cpu": "native, CPU kernels only",
             "python": "pure-PyTorch fallback"}[soap_cuda.backend()]
    return {"device": where, "build": build, "torch": torch.__version__}


def _metrics_module():
    try:
        from soap_cuda import metrics
    except ImportError:
        return None
    return metrics


@torch.no_grad()
def _loss_acc(model, x, y, chunk: int = 8192) -> tuple[float, float]:
    total, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk])
        total += float(F.cross_entropy(out, y[i:i + chunk], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return total / len(y), correct / len(y)


def evaluate(model, data: Dataset, probe: tuple[torch.Tensor, torch.Tensor],
             alignment: bool = True) -> dict:
    """Losses, accuracies and (with `alignment`) per-layer alignment; eval mode so no feedback
    sync is counted."""
    was_training = model.training
    model.eval()
    try:
        rec = {}
        rec["train_loss"], rec["train_acc"] = _loss_acc(model, data.x_train, data.y_train)
        rec["test_loss"], rec["test_acc"] = _loss_acc(model, data.x_test, data.y_test)
        if data.has_validation:
            rec["val_loss"], rec["val_acc"] = _loss_acc(model, data.x_val, data.y_val)
        metrics = _metrics_module()
        layers: dict[str, dict] = {}
        if metrics is not None and alignment:
            for name, m in metrics.feedback_alignment(model).items():
                layers.setdefault(name, {}).update(
                    bw_angle_deg=m["angle_deg"], bw_norm_ratio=m["norm_ratio"])
            if all(math.isfinite(rec[k]) for k in ("train_loss", "test_loss")):
                err = metrics.error_signal_alignment(model, F.cross_entropy, *probe)
                for name, m in err.items():
                    layers.setdefault(name, {}).update(
                        err_angle_deg=m["angle_deg"], err_norm_ratio=m["norm_ratio"],
                        wgrad_angle_deg=m["weight_grad_angle_deg"],
                        wgrad_norm_ratio=m["weight_grad_norm_ratio"])
        rec["layers"] = layers
        return rec
    finally:
        model.train(was_training)


def diverged_eval(has_validation: bool) -> dict:
    """What an evaluation of a diverged run records: infinite losses, no accuracies."""
    fields = dict(train_loss=math.inf, test_loss=math.inf, train_acc=None, test_acc=None,
                  layers={})
    if has_validation:
        fields.update(val_loss=math.inf, val_acc=None)
    return fields


class CheckpointClock:
    """When a run (or a stack of runs) writes its checkpoint at an evaluation: every
    `every_evals` evaluations if given, else at the first evaluation CHECKPOINT_INTERVAL_S or
    more after the last checkpoint (so short runs pay for one, at their end)."""

    def __init__(self, every_evals: int | None = None):
        self.every_evals = every_evals
        self.last = time.perf_counter()

    def due(self, evals: int) -> bool:
        if self.every_evals is not None:
            return evals % self.every_evals == 0
        return time.perf_counter() - self.last >= CHECKPOINT_INTERVAL_S

    def written(self) -> None:
        self.last = time.perf_counter()


def aligns_at(evaluation: int, align_every: int) -> bool:
    """Whether the evaluation numbered `evaluation` (0 = the first) measures alignment: each of
    the first `align_every`, where the angles move fastest, then every `align_every`-th."""
    return evaluation < align_every or evaluation % align_every == 0


def diverged_by_loss(records: list[dict], train_loss: float) -> bool:
    """A run's eval rule for divergence: the training loss is not finite, or exceeds
    DIVERGE_FACTOR times its first evaluation's."""
    evals = [r for r in records if r["kind"] == "eval"]
    return bool(evals) and not train_loss <= DIVERGE_FACTOR * evals[0]["train_loss"]


def best_validation(records: list[dict]) -> dict | None:
    """The evaluation of highest validation accuracy (the earliest of equals) with its test
    numbers, or None when the run has no validation split or no healthy evaluation."""
    evals = [r for r in records if r["kind"] == "eval" and r.get("val_acc") is not None
             and not r.get("diverged")]
    if not evals:
        return None
    best = max(evals, key=lambda r: (r["val_acc"], -r["examples"]))
    return {"examples": best["examples"], "val_acc": best["val_acc"],
            "val_loss": best["val_loss"], "test_acc": best["test_acc"],
            "test_error": 1.0 - best["test_acc"]}


def final_record(last: dict, diverged: bool, wall_s: float,
                 records: list[dict] | None = None) -> dict:
    """The run's "final" record from its last evaluation (infinite losses if it diverged) and,
    with a validation split, the best-validation evaluation among `records`."""
    final = {k: last.get(k) for k in ("examples", "train_loss", "train_acc", "test_loss",
                                       "test_acc")}
    if diverged:
        final["train_loss"] = final["test_loss"] = math.inf
    final.update(kind="final", diverged=diverged, wall_s=wall_s)
    best = best_validation(records or [])
    if best is not None:
        final["best_val"] = best
    return final


def eval_subsets(data: Dataset, eval_examples: int) -> tuple[Dataset, Dataset]:
    """(what every evaluation looks at, what the final one does): at most `eval_examples` of
    each split, drawn once by a fixed permutation (seed 0, whatever the run's seed: every run on
    these data is measured on the same examples); the final evaluation keeps that training
    subset and takes the whole test set. eval_examples=0: the whole splits throughout. With a
    validation split, every evaluation takes the whole validation and test splits: the model
    chosen by validation is judged on the whole test set, whichever evaluation it was."""
    if eval_examples <= 0:
        return data, data

    def pick(x, y):
        if len(y) <= eval_examples:
            return x, y
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:eval_examples]
        idx = idx.sort().values.to(y.device)
        return x[idx], y[idx]
    x_train, y_train = pick(data.x_train, data.y_train)
    x_test, y_test = (data.x_test, data.y_test) if data.has_validation else \
        pick(data.x_test, data.y_test)
    every = Dataset(data.name, data.description, x_train, y_train, x_test, y_test,
                    data.num_classes, data.image_shape, data.x_val, data.y_val)
    final = Dataset(data.name, data.description, x_train, y_train, data.x_test, data.y_test,
                    data.num_classes, data.image_shape, data.x_val, data.y_val)
    return every, final


# Which draw orders an epoch's examples. "philox" (every run since it exists): on the data's
# device, the same on every device; "randperm" (older checkpoints, resumed as they began): a
# seeded CPU torch.randperm copied over.
EPOCH_ORDER = "philox"
# mixed into a run's seed so its order stream is none of its feedback streams (seed, sync_count)
_ORDER_STREAM = 0x0DE5_0DE5_0DE5_0DE5


def _epoch_order(seed: int, epoch: int, n: int, device, kind: str = EPOCH_ORDER) -> torch.Tensor:
    """The order of the n training examples in `epoch`: a pure function of (seed, epoch), so
    resuming needs no generator state. "philox": the stable argsort of n float64 normals of the
    project's Philox stream (seed, epoch), drawn on `device` (no host draw and copy per epoch;
    bit-identical on CPU and CUDA, so a run sees the same examples on either)."""
    if kind == "randperm":
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(n, generator=g).to(device)
    if kind != "philox":
        raise ValueError(f"unknown epoch order {kind!r}")
    keys = torch.empty(n, dtype=torch.float64, device=device)
    torch.ops.soap_cuda.philox_normal_fill(keys, stream_seed(int(seed) ^ _ORDER_STREAM), epoch)
    return torch.argsort(keys, stable=True)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


class _Writer:
    """JSON-lines sink; on resume the file is rewritten from the checkpoint's records."""

    def __init__(self, path: Path | None, records: list[dict]):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                for r in records:
                    f.write(json.dumps(_json_safe(r)) + "\n")

    def write(self, rec: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(_json_safe(rec)) + "\n")


class PendingLosses:
    """Step losses (one per model: (M,), or 0-d for one run) waiting on the device until an
    evaluation, every FLUSH_STEPS steps or the end reads them all at once: no host
    synchronisation per step on a GPU. They wait in a ring of FLUSH_STEPS rows allocated once
    (each step one copy into its row; one read per flush). A loss that stopped being finite at
    step s ends its run as of step s, as if it had been read at once (the steps taken after it
    were on NaNs)."""

    def __init__(self, capacity: int = FLUSH_STEPS):
        self.capacity = capacity
        self._ring: torch.Tensor | None = None
        self._waiting: list[tuple] = []  # (examples taken, examples after, step) per row

    def add(self, losses: torch.Tensor, take: int, examples: int, step: int) -> bool:
        """Keep a step's losses; True when the ring is full (time to read)."""
        row = losses.detach().reshape(-1)
        ring = self._ring
        if ring is None or ring.shape[1] != row.numel():
            if self._waiting:
                raise ValueError(f"a step's losses changed from {ring.shape[1]} values to "
                                 f"{row.numel()} between reads")
            ring = self._ring = torch.empty(self.capacity, row.numel(), dtype=row.dtype,
                                            device=row.device)
        if len(self._waiting) >= self.capacity:
            raise RuntimeError("PendingLosses is full: read() it when add() returns True")
        ring[len(self._waiting)].copy_(row)  # (a loss of another dtype or device converts)
        self._waiting.append((take, examples, step))
        return len(self._waiting) >= self.capacity

    def read(self, alive=lambda k: True):
        """(model, loss, examples taken, examples after, step) of every waiting step, in step
        order, for the models that `alive(model)` still says so of when their turn comes."""
        if not self._waiting:
            return
        rows = self._ring[:len(self._waiting)].tolist()
        waiting, self._waiting = self._waiting, []
        for values, (take, examples, step) in zip(rows, waiting):
            for k, value in enumerate(values):
                if alive(k):
                    yield k, value, take, examples, step


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves half a checkpoint


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="ex", unit_scale=True, desc=desc, file=sys.stderr,
                dynamic_ncols=True, leave=True)


def train(cfg: TrainConfig, out_path: str | os.PathLike | None = None,
          checkpoint_path: str | os.PathLike | None = None, resume: bool = False,
          data: Dataset | None = None, progress: bool = False,
          checkpoint_every_evals: int | None = None, on_step=None) -> list[dict]:
    """Run `cfg`; return its records (also written to `out_path` as JSON lines).

    With `checkpoint_path`, a checkpoint is written atomically every `checkpoint_every_evals`
    evaluations (default: at the first evaluation CHECKPOINT_INTERVAL_S or more after the last
    checkpoint, so short runs pay for one) and at the end; `resume=True` continues from it exactly (same data order, same
    RNG state, same optimizer state), also when `cfg.epochs` was raised to train longer.
    `on_step(examples)` after every optimizer step (a sweep's progress bar).
    """
    cfg.validate()
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.device,
                            cfg.train_examples, cfg.test_examples, cfg.pad_to, cfg.val_fraction)
    device = data.x_train.device
    n = len(data.y_train)
    budget = int(round(cfg.epochs * n))
    eval_every = cfg.eval_every or max(1, n // 20)
    probe = (data.x_train[:cfg.probe_examples], data.y_train[:cfg.probe_examples])
    eval_data, final_data = eval_subsets(data, cfg.eval_examples)

    torch.manual_seed(cfg.seed)
    if cfg.model == "mlp":
        model = build_mlp(data.in_features, cfg.hidden, data.num_classes, cfg.rule,
                          cfg.sync_every, cfg.activation, device, cfg.sync_at_start)
    else:
        model = build_conv(cfg.model, data.image_shape, data.num_classes, cfg.rule,
                           cfg.sync_every, device, cfg.sync_at_start)
    opt = make_optimizer(model, cfg.rule, cfg.optimizer, cfg.lr, cfg.momentum,
                         cfg.weight_decay, cfg.layer_lr_scale)
    base_lrs = [group["lr"] for group in opt.param_groups]

    def set_lr_for(examples: int) -> None:
        # step schedule: x0.1 at each drop passed; a function of the position, so resume is exact
        factor = 0.1 ** sum(examples >= f * budget for f in cfg.lr_drops)
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * factor

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"{ckpt}: checkpoint version {state.get('version')} not supported")
        old = TrainConfig.normalised(dict(state["config"])) or dict(state["config"])
        new = cfg.to_dict()
        diff = [k for k in new if k not in ("epochs", "device") and old.get(k) != new[k]]
        if diff:
            raise RuntimeError(f"{ckpt}: checkpoint was made with different settings "
                               f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)})")
        model.load_state_dict(state["model"])
        with torch.no_grad():  # buffers verbatim: FALinear's loader may re-derive B0 from B
            for name, buf in model.named_buffers():
                if name in state["model"]:
                    buf.copy_(state["model"][name])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        pos = state["position"]
        pos.setdefault("order", "randperm")  # a checkpoint from before the Philox order
        records = [r for r in state["records"] if r["kind"] != "final"]
        elapsed0 = state["elapsed_s"]
    else:
        pos = {"examples": 0, "step": 0, "epoch": 0, "batch": 0, "next_eval": 0,
               "evals": 0, "batch_loss_sum": 0.0, "batch_loss_n": 0, "order": EPOCH_ORDER}
        records = [{"kind": "config", "config": cfg.to_dict(), "data": data.summary(),
                    **run_environment(device)}]
        elapsed0 = 0.0
    writer = _Writer(Path(out_path) if out_path else None, records)
    t0 = time.perf_counter() - elapsed0

    def log_eval(diverged: bool = False, final: bool = False) -> dict:
        rec = {"kind": "eval", "examples": pos["examples"], "step": pos["step"],
               "epoch": pos["examples"] / n,
               "batch_loss": (pos["batch_loss_sum"] / pos["batch_loss_n"]
                              if pos["batch_loss_n"] else None)}
        if diverged:
            rec.update(diverged_eval(data.has_validation))
        else:
            on = final_data if final else eval_data
            align = final or aligns_at(pos["evals"], cfg.align_every)
            rec.update(evaluate(model, on, probe, alignment=align))
            rec["eval_examples"] = [len(on.y_train), len(on.y_test)]
            if diverged_by_loss(records, rec["train_loss"]):
                rec["diverged"] = True
        rec["wall_s"] = time.perf_counter() - t0
        pos["batch_loss_sum"], pos["batch_loss_n"] = 0.0, 0
        records.append(rec)
        writer.write(rec)
        return rec

    clock = CheckpointClock(checkpoint_every_evals)

    def checkpoint() -> None:
        if ckpt is None:
            return
        clock.written()
        _save_checkpoint(ckpt, {
            "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "position": dict(pos), "records": records,
            "elapsed_s": time.perf_counter() - t0})

    pending = PendingLosses()

    def flush() -> bool:
        """Read the pending losses; True if one was not finite (the run diverged there)."""
        for _, value, take, examples, step in pending.read():
            if not math.isfinite(value):
                pos["examples"], pos["step"] = examples, step
                return True
            pos["batch_loss_sum"] += value * take
            pos["batch_loss_n"] += take
        return False

    bar = _progress(budget, progress, cfg.name)
    if bar is not None:
        bar.update(pos["examples"])
    diverged = False
    model.train()
    if pos["examples"] == 0 and pos["evals"] == 0:
        log_eval()
        pos["evals"], pos["next_eval"] = 1, eval_every
    while pos["examples"] < budget and not diverged:
        order = _epoch_order(cfg.seed, pos["epoch"], n, device, pos["order"])
        while pos["batch"] * cfg.batch_size < n and pos["examples"] < budget:
            start = pos["batch"] * cfg.batch_size
            take = min(cfg.batch_size, n - start, budget - pos["examples"])
            idx = order[start:start + take]
            xb, yb = data.x_train[idx], data.y_train[idx]
            if cfg.lr_drops:
                set_lr_for(pos["examples"])

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            # SOAP measures its step's three losses on this batch in one batched pass
            loss = opt.step(closure, xb, yb) if cfg.rule == "soap" else opt.step(closure)
            pos["batch"] += 1
            pos["step"] += 1
            pos["examples"] += take
            due = pending.add(loss.detach() if torch.is_tensor(loss)
                              else torch.tensor(float(loss)), take, pos["examples"], pos["step"])
            if bar is not None:
                bar.update(take)
            if on_step is not None:
                on_step(take)
            if due and flush():
                diverged = True
                break
            if pos["examples"] >= pos["next_eval"] and pos["examples"] < budget:
                if flush():
                    diverged = True
                    break
                rec = log_eval()
                pos["evals"] += 1
                pos["next_eval"] += eval_every
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['train_loss']:.4f}", acc=f"{rec['test_acc']:.3f}")
                if rec.get("diverged"):
                    diverged = True
                    break
                if clock.due(pos["evals"]):
                    checkpoint()
        if pos["batch"] * cfg.batch_size >= n:
            pos["epoch"] += 1
            pos["batch"] = 0
    if bar is not None:
        bar.close()
    diverged = flush() or diverged
    last = log_eval(diverged=diverged, final=True)
    diverged = diverged or bool(last.get("diverged"))
    pos["evals"] += 1
    while pos["next_eval"] <= pos["examples"]:  # so a resumed run does not re-log this point
        pos["next_eval"] += eval_every
    final = final_record(last, diverged, time.perf_counter() - t0, records)
    records.append(final)
    writer.write(final)
    checkpoint()
    return records


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines results file (None losses from diverged runs become inf)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            for k in ("train_loss", "test_loss"):
                if k in rec and (rec[k] is None or rec[k] >= 1e308):
                    rec[k] = math.inf
            out.append(rec)
    return out
