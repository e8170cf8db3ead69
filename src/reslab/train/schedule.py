"""The paper's CIFAR learning-rate schedule (Sec. 4.2).

lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k; for nets of 110 layers and
more, lr 0.01 until the training error is below 80% (about 400 iterations), then 0.1.

The ImageNet recipe's "divided by 10 when the error plateaus" (Sec. 3.4) is torch's
ReduceLROnPlateau (`PlateauSchedule`). The CIFAR schedule is hand-written rather than
torch.optim.lr_scheduler because the warm-up ends on a training
error criterion, not at a fixed step, and because a pure function of the iteration makes
resuming exact without saving scheduler state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_ITERATIONS = 64_000
PAPER_MILESTONES = (32_000, 48_000)


def scale_milestones(
    iterations: int,
    milestones: tuple[int, ...] = PAPER_MILESTONES,
    reference: int = PAPER_ITERATIONS,
) -> tuple[int, ...]:
    """Milestones for a run of `iterations`, in the paper's proportion (32k/64k, 48k/64k)."""
    return tuple(max(1, round(m * iterations / reference)) for m in milestones)


@dataclass
class StepSchedule:
    """Piecewise-constant lr: `base_lr * gamma**k` after the k-th milestone, with an
    optional warm-up at `warmup_lr` that lasts until `observe_train_error` sees the training
    error fall below `warmup_until_error` (Sec. 4.2, ResNet-110)."""

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_lr: float | None = None
    warmup_until_error: float = 0.8
    warming_up: bool = False

    def __post_init__(self) -> None:
        self.warming_up = self.warmup_lr is not None

    def lr(self, iteration: int) -> float:
        """The learning rate for the update that follows `iteration` completed updates."""
        if self.warming_up:
            return float(self.warmup_lr)
        k = sum(1 for m in self.milestones if iteration >= m)
        return self.base_lr * self.gamma**k

    def observe_train_error(self, error: float) -> bool:
        """Feed the recent training error; ends the warm-up once it is below the threshold.
        Returns True when this call ended the warm-up."""
        if self.warming_up and error < self.warmup_until_error:
            self.warming_up = False
            return True
        return False

    def after_eval(self, error: float) -> None:
        """Fixed milestones: evaluations do not change the schedule."""

    def state_dict(self) -> dict:
        return {"warming_up": self.warming_up}

    def load_state_dict(self, state: dict) -> None:
        self.warming_up = bool(state["warming_up"])


def needs_warmup(depth: int) -> bool:
    """The paper warms up ResNet-110 and ResNet-1202 (Sec. 4.2): nets of 110 layers or more."""
    return depth >= 110


class PlateauSchedule:
    """lr divided by 10 when the evaluation error plateaus (ImageNet, Sec. 3.4): torch's
    `ReduceLROnPlateau(mode="min")` owns the optimizer's lr; `lr()` reads it back so the
    loop treats both schedules alike, and `after_eval(error)` feeds it."""

    warming_up = False

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int = 5,
                 threshold: float = 1e-3, gamma: float = 0.1) -> None:
        self.optimizer = optimizer
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=gamma, patience=patience, threshold=threshold)

    def lr(self, iteration: int) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def observe_train_error(self, error: float) -> bool:
        return False

    def after_eval(self, error: float) -> None:
        self.plateau.step(error)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])
