"""The paper's ImageNet training recipe (Sec. 3.4), as plain values.

    "The image is resized with its shorter side randomly sampled in [256, 480] for scale
    augmentation. A 224x224 crop is randomly sampled from an image or its horizontal
    flip, with the per-pixel mean subtracted. The standard color augmentation is used.
    ... We use SGD with a mini-batch size of 256. The learning rate starts from 0.1 and
    is divided by 10 when the error plateaus, and the models are trained for up to
    60 x 10^4 iterations. We use a weight decay of 0.0001 and a momentum of 0.9. We do
    not use dropout. ... In testing, for comparison studies we adopt the standard
    10-crop testing. For best results, we adopt the fully-convolutional form ... and
    average the scores at multiple scales (images are resized such that the shorter
    side is in {224, 256, 384, 480, 640})."

Independent of the trainer: it only records the values. `PlateauSchedule` is a thin
wrapper of torch's ReduceLROnPlateau for "divide by 10 when the error plateaus".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageNetRecipe:
    """Sec. 3.4's hyper-parameters. `batch_size` is global (divide by the world size for
    the per-process batch under DDP)."""

    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iterations: int = 600_000  # "up to 60e4 iterations"
    lr_factor: float = 0.1  # "divided by 10 ..."
    lr_policy: str = "plateau"  # "... when the error plateaus"; or "milestones"
    # Plateau policy (the paper gives no patience; these are our choice): on the
    # validation top-1 error, checked every `eval_every` iterations (~1 epoch at 256).
    plateau_patience: int = 5
    plateau_threshold: float = 1e-3
    eval_every: int = 5005
    # Fixed-milestone alternative (fb.resnet.torch's: /10 every 30 epochs, 90 epochs):
    milestone_epochs: tuple[int, ...] = (30, 60)
    epochs: int = 90
    dropout: bool = False
    # augmentation
    scale: tuple[int, int] = (256, 480)
    crop: int = 224
    flip: bool = True
    mean: str = "per-pixel"  # subtracted; no std division in the paper
    lighting_alphastd: float = 0.1  # AlexNet PCA colour augmentation
    # testing
    test_resize: int = 256
    test_crops: int = 10  # comparisons (Tables 2, 3)
    test_scales: tuple[int, ...] = (224, 256, 384, 480, 640)  # best results (Table 4)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IMAGENET_RECIPE = ImageNetRecipe()


class PlateauSchedule:
    """lr /= 10 when the validation error stops falling (Sec. 3.4): torch's
    `ReduceLROnPlateau(mode="min", factor=0.1)`; call `step(val_error)` after each
    evaluation. State dict round-trips for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int = 5,
                 threshold: float = 1e-3, factor: float = 0.1, min_lr: float = 0.0) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=patience, threshold=threshold,
            min_lr=min_lr)

    def step(self, val_error: float) -> None:
        self.scheduler.step(val_error)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def imagenet_overrides() -> dict:
    """TrainConfig values of the ImageNet recipe (for `reslab train --recipe imagenet`)."""
    r = IMAGENET_RECIPE
    return {"batch_size": r.batch_size, "lr": r.lr, "momentum": r.momentum,
            "weight_decay": r.weight_decay, "iterations": r.max_iterations,
            "lr_policy": r.lr_policy, "plateau_patience": r.plateau_patience,
            "plateau_threshold": r.plateau_threshold, "eval_every": r.eval_every,
            "eval_batch_size": 100}


def recipe_with(extra: dict) -> ImageNetRecipe:
    """`IMAGENET_RECIPE` with the input sizes of `TrainConfig.extra` (`scale`: [min, max],
    `crop`, `test_resize`) replaced: small images for tests; the defaults are the paper's."""
    from reslab.errors import ReslabError

    r = IMAGENET_RECIPE
    scale = tuple(int(v) for v in extra.get("scale", r.scale))
    crop = int(extra.get("crop", r.crop))
    test_resize = int(extra.get("test_resize", r.test_resize))
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ReslabError(f"--scale must be MIN MAX with 0 < MIN <= MAX, got {list(scale)}")
    if not 0 < crop <= scale[0]:
        raise ReslabError(f"--crop {crop} must be in [1, --scale MIN = {scale[0]}]")
    if crop > test_resize:
        raise ReslabError(f"--crop {crop} must be <= --test-resize {test_resize}")
    return dataclasses.replace(r, scale=scale, crop=crop, test_resize=test_resize)
