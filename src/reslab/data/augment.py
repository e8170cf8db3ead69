"""Preprocessing and batched augmentation (Sec. 3.4 and Sec. 4.2 of the paper).

CIFAR recipe (Sec. 4.2): subtract the per-pixel mean of the training images; for
training, pad 4 pixels on each side and take a random 32x32 crop of the padded image or
its horizontal flip; test on the single original view. Everything here works on whole
batches with tensor ops, on whichever device the batch lives (no per-image Python work).
"""

from __future__ import annotations

from typing import Any

import torch


def per_pixel_mean(images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-pixel mean of uint8 images (N, C, H, W) as float32 (C, H, W) in [0, 1] units.

    Summed in float64 over chunks of `chunk` images, so no float copy of the whole set.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) batch, got {tuple(images.shape)}")
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        total += images[start : start + chunk].to(torch.float64).sum(0)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    return (total / (images.shape[0] * scale)).to(torch.float32)


def per_channel_mean_std(
    images: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (each float32 (C,), [0, 1] units) of uint8 images."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).cpu() / 255.0
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def _as_stat(t: torch.Tensor | Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32).detach().cpu()
    if t.dim() == 1:
        t = t[:, None, None]
    if t.dim() != 3:
        raise ValueError(
            f"{what} must have shape (C,), (C, 1, 1) or (C, H, W), got {tuple(t.shape)}"
        )
    return t.contiguous()


class Preprocess:
    """uint8 batch (N, C, H, W) -> float32 `(x / 255 - mean) / std` on the batch's device.

    `mean` is per pixel (C, H, W) or per channel (C,) / (C, 1, 1) in [0, 1] units; `std`
    likewise, or None for no division. The paper's CIFAR recipe (Sec. 4.2) is the per-pixel
    training mean and no std: `Preprocess(per_pixel_mean(train.images))`. The same
    transform serves the test view (no augmentation).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor | None = None) -> None:
        self.mean = _as_stat(mean, "mean")
        self.std = None if std is None else _as_stat(std, "std")
        if self.std is not None and self.std.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"mean has {self.mean.shape[0]} channels but std has {self.std.shape[0]}"
            )
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        stats = self._cache.get(device)
        if stats is None:
            mean = self.mean.to(device)
            std = None if self.std is None else self.std.to(device)
            stats = self._cache[device] = (mean, std)
        return stats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected a (N, {self.mean.shape[0]}, H, W) batch, got {tuple(x.shape)}"
            )
        if self.mean.shape[1:] != (1, 1) and x.shape[2:] != self.mean.shape[1:]:
            raise ValueError(
                f"per-pixel mean is {tuple(self.mean.shape[1:])} but images are "
                f"{tuple(x.shape[2:])}"
            )
        mean, std = self._stats(x.device)
        out = x.to(torch.float32).div_(255.0).sub_(mean)
        if std is not None:
            out.div_(std)
        return out

    def to_dict(self) -> dict[str, torch.Tensor | None]:
        """`{"mean": Tensor, "std": Tensor | None}`, as stored in checkpoints."""
        return {"mean": self.mean.clone(), "std": None if self.std is None else self.std.clone()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(d["mean"], d.get("std"))

    def __repr__(self) -> str:
        kind = "per-pixel" if self.mean.shape[1:] != (1, 1) else "per-channel"
        std = "none" if self.std is None else str(tuple(self.std.shape))
        return f"Preprocess({kind} mean {tuple(self.mean.shape)}, std={std})"


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sec. 4.2 augmentation on a whole batch: zero-pad `pad` pixels on each side, take a
    random HxW crop per image, and flip it horizontally with probability 1/2 per image.

    `x` is (N, C, H, W) of any dtype (normally float, already mean-subtracted, so the
    zero padding is the mean colour) on any device; `generator` must live on that device.
    Done with one gather (advanced indexing), no Python loop over images.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    dev = x.device
    padded = x.new_zeros((n, c, h + 2 * pad, w + 2 * pad))
    padded[:, :, pad : pad + h, pad : pad + w] = x
    oy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    flip = torch.rand((n,), device=dev, generator=generator) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = oy[:, None] + ar_h  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (N, W)
    idx_n = torch.arange(n, device=dev)[:, None, None]
    out = padded[idx_n, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
