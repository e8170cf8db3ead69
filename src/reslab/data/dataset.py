"""The in-memory form every data source becomes: uint8 image tensors plus labels.

Images stay uint8 (N, C, H, W) on the CPU; conversion to float, mean subtraction and
augmentation happen per batch on the training device (see `reslab.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reslab.errors import ReslabError


@dataclass
class ImageSplit:
    """One split: `images` uint8 (N, C, H, W) contiguous on CPU, `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 (N,) with N={self.images.shape[0]}, got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> ImageSplit:
        """The images at `index` (a new, contiguous copy)."""
        return ImageSplit(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass
class ImageData:
    """A whole data set: class names and its train / test (/ val) splits."""

    name: str
    classes: list[str]
    train: ImageSplit
    test: ImageSplit
    val: ImageSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        parts = [f"train={len(self.train)}", f"test={len(self.test)}"]
        if self.val is not None:
            parts.insert(1, f"val={len(self.val)}")
        c, h, w = self.train.image_shape
        return (
            f"ImageData({self.name!r}, {len(self.classes)} classes, {c}x{h}x{w}, "
            + ", ".join(parts)
            + ")"
        )


def split_validation(data: ImageData, val_split: int, seed: int = 0) -> ImageData:
    """Hold out `val_split` training images as `val` (Sec. 4.2: the 45k/5k split).

    The held-out images are a random subset drawn from `seed`; both parts keep their
    original order.
    """
    if val_split == 0:
        return data
    n = len(data.train)
    if val_split < 0 or val_split >= n:
        raise ReslabError(
            f"val_split={val_split} must be between 0 and {n - 1} "
            f"(the training set of {data.name} has {n} images)"
        )
    if data.val is not None:
        raise ReslabError(
            f"{data.name} already has a val split ({len(data.val)} images); use val_split=0"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_idx = perm[:val_split].sort().values
    train_idx = perm[val_split:].sort().values
    return ImageData(
        name=data.name,
        classes=data.classes,
        train=data.train.subset(train_idx),
        test=data.test,
        val=data.train.subset(val_idx),
    )
