"""TrainConfig: everything that defines one training run, serialisable to JSON."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .models import MODELS, SYNCED_RULES, feedback_rules
from .optimizers import OPTIMIZERS, ConfigError


@dataclass
class TrainConfig:
    rule: str = "fa"
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    sync_every: int | None = 1000  # examples between feedback syncs (sign rules only)
    sync_at_start: bool = False  # sign rules: also sync before the first batch
    seed: int = 0
    epochs: float = 5.0  # fractional epochs allowed: the budget is epochs * train examples
    batch_size: int = 32
    model: str = "mlp"  # mlp, lenet (LeNet-5, 32x32 input), resnet20 (CIFAR ResNet-20)
    lr_drops: list[float] = field(default_factory=list)  # fractions of training: lr x 0.1 each
    hidden: list[int] = field(default_factory=lambda: [1000])  # (mlp only, as activation)
    activation: str = "tanh"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    train_examples: int | None = None
    test_examples: int | None = None
    # share of the training examples held out as a validation split (class-stratified, the same
    # for every run); every evaluation then also measures it and the whole test set, and the
    # final record gives the test error of the best-validation evaluation
    val_fraction: float = 0.0
    eval_every: int | None = None  # examples between evaluations; None = 20 per epoch
    # examples of each split an evaluation looks at: a fixed random subset, the same for every
    # run (paired comparisons); 0 = the whole split. The final evaluation uses the whole test set.
    eval_examples: int = 1000
    # evaluations between alignment measurements (B-W angles, error signals on the probe batch:
    # two extra forward/backward passes, the dearest part of an evaluation); each of the first
    # align_every evaluations (the angles move fastest early) and the last always measure
    align_every: int = 4
    probe_examples: int = 512  # training examples used to measure error-signal alignment
    layer_lr_scale: dict[str, float] | None = None  # gain-matched backprop: lr multiplier per layer
    label: str | None = None  # the arm's name in a sweep; defaults to the rule
    device: str = "cpu"

    def __post_init__(self):
        self.hidden = [int(h) for h in self.hidden]
        self.lr_drops = sorted(float(f) for f in self.lr_drops)
        self.validate()

    @property
    def name(self) -> str:
        return self.label or self.rule

    def validate(self) -> None:
        rules = feedback_rules()
        if self.rule not in rules:
            raise ConfigError(f"unknown rule {self.rule!r}; this install supports "
                              f"{', '.join(rules)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from "
                              f"{', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError("epochs and batch size must be positive")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {self.hidden}")
        if self.rule in SYNCED_RULES and (self.sync_every is None or self.sync_every <= 0):
            raise ConfigError(f"rule {self.rule!r} updates B from W: give --sync-every T > 0")
        if self.eval_every is not None and self.eval_every <= 0:
            raise ConfigError("--eval-every must be positive")
        if self.align_every <= 0:
            raise ConfigError("--align-every must be positive")
        if self.eval_examples < 0:
            raise ConfigError("--eval-examples must be >= 0 (0: the whole split)")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if any(not 0 < f < 1 for f in self.lr_drops):
            raise ConfigError(f"--lr-drops are fractions of training in (0, 1), got "
                              f"{self.lr_drops}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight decay must be non-negative")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def pad_to(self) -> int | None:
        """Image size the model needs (28x28 data is padded to it), or None for the MLP."""
        return None if self.model == "mlp" else 32

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def normalised(cls, d: dict) -> dict | None:
        """A stored config as this version writes it (fields added since take their defaults,
        which reproduce the old behaviour), or None if it is no longer valid."""
        try:
            return cls.from_dict(d).to_dict()
        except (ConfigError, TypeError, ValueError):
            return None
