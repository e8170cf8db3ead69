"""Training configuration: one object describes a run (DESIGN.md), with the paper's values.

`cifar_recipe()` is Sec. 4.2's CIFAR-10 recipe; the CLI only builds a TrainConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reslab.errors import ReslabError
from reslab.train.schedule import PAPER_ITERATIONS, PAPER_MILESTONES


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's CIFAR recipe."""

    model: str = "resnet20"
    shortcut: str | None = None  # None: the paper's default for the net (A for CIFAR)
    data: str = "cifar10"  # cifar10, cifar100, synthetic, or a PATH
    data_root: str | None = None  # where cifar10/cifar100 live ($RESLAB_HOME/data by default)
    val_split: int = 0  # hold out this many training images as validation (paper: 5000)
    skip_corrupt: bool = False
    out: str = "runs/resnet20"
    recipe: str = "cifar"
    # optimisation (Sec. 4.2)
    iterations: int = PAPER_ITERATIONS
    epochs: float | None = None  # if set, overrides iterations (ceil(epochs * N / batch))
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] | None = None  # None: 32k/48k of 64k, scaled to `iterations`
    gamma: float = 0.1
    lr_policy: str = "step"  # step (fixed milestones) or plateau (/10 when eval error stalls)
    plateau_patience: int = 5  # evaluations without improvement before lr /= 10
    plateau_threshold: float = 1e-3
    warmup: bool | None = None  # None: on for nets of >= 110 layers, as the paper
    warmup_lr: float = 0.01
    warmup_until_error: float = 0.8
    # augmentation (Sec. 4.2)
    pad: int = 4
    mean: str = "per-pixel"  # per-pixel (the paper) or per-channel mean subtraction
    # evaluation and outputs
    eval_every: int | None = None  # None: about 20 evaluations per run, at most every 1000
    eval_batch_size: int = 1000
    log_every: int = 20
    # engine
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    seed: int = 0
    resume: bool = False  # continue the run in `out` from its last.pt
    progress: bool = True
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["milestones"] is not None:
            d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ReslabError(f"unknown training options: {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("milestones") is not None:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)

    def validate(self) -> None:
        """Raise ReslabError for values no run can use."""
        checks = [
            (self.iterations >= 1, f"--iterations must be >= 1, got {self.iterations}"),
            (self.epochs is None or self.epochs > 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.eval_every is None or self.eval_every >= 1, "--eval-every must be >= 1"),
            (self.val_split >= 0, "--val-split must be >= 0"),
            (self.precision in ("auto", "fp32", "bf16"), "--precision must be auto, fp32 or bf16"),
            (self.pad >= 0, "--pad must be >= 0"),
            (self.recipe in ("cifar", "imagenet"), "--recipe must be cifar or imagenet"),
            (self.lr_policy in ("step", "plateau"), "--lr-policy must be step or plateau"),
            (self.mean in ("per-pixel", "per-channel"), "--mean must be per-pixel or per-channel"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ReslabError(msg)


def cifar_recipe(**overrides) -> TrainConfig:
    """The paper's CIFAR-10 recipe (Sec. 4.2): SGD momentum 0.9, weight decay 1e-4,
    batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, 64k iterations, 4-pixel
    pad + random crop + flip, warm-up at 0.01 for 110+ layers."""
    cfg = TrainConfig(**overrides)
    cfg.validate()
    return cfg


def resolved_milestones(cfg: TrainConfig, iterations: int) -> tuple[int, ...]:
    """The milestones actually used: given ones, or the paper's scaled to `iterations`."""
    from reslab.train.schedule import scale_milestones

    if cfg.milestones is not None:
        return tuple(cfg.milestones)
    return scale_milestones(iterations, PAPER_MILESTONES, PAPER_ITERATIONS)
