"""Preprocessing and batched augmentation (Sec. 3.4 and Sec. 4.2 of the paper).

CIFAR recipe (Sec. 4.2): subtract the per-pixel mean of the training images; for
training, pad 4 pixels on each side and take a random 32x32 crop of the padded image or
its horizontal flip; test on the single original view. ImageNet (Sec. 3.4) subtracts the
per-pixel mean too, resized to whatever size the input has. Everything here works on
whole batches with tensor ops, on whichever device the batch lives (no per-image Python
work): `Preprocess` is the one normalizer, `per_pixel_mean` / `per_channel_mean_std` the
one mean estimator.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

Images = torch.Tensor | Iterable[torch.Tensor]


def _batches(images: Images, chunk: int) -> Iterator[torch.Tensor]:
    """(n, C, H, W) pieces of a (N, C, H, W) tensor, or of an iterable of (C, H, W) images
    and (N, C, H, W) batches."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            yield images[None]
            return
        if images.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got {tuple(images.shape)}")
        for start in range(0, images.shape[0], chunk):
            yield images[start : start + chunk]
        return
    for item in images:
        if not isinstance(item, torch.Tensor) or item.dim() not in (3, 4):
            got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"expected (C, H, W) images or (N, C, H, W) batches, got {got}")
        yield from _batches(item, chunk)


def _unit(x: torch.Tensor) -> float:
    """The value of 1.0 in `x`'s units: 255 for uint8, 1 for float in [0, 1]."""
    return 255.0 if x.dtype == torch.uint8 else 1.0


def per_pixel_mean(images: Images, chunk: int = 1024) -> torch.Tensor:
    """Per-pixel mean (C, H, W) as float32 in [0, 1] units of uint8 (or float [0, 1])
    images: a (N, C, H, W) tensor, or an iterable of (C, H, W) images / (N, C, H, W)
    batches of one size (e.g. the centre crops of a sample of ImageNet training images,
    Sec. 3.4). Summed in float64 over chunks of `chunk` images, so no float copy of the set.
    """
    total: torch.Tensor | None = None
    count = 0
    for x in _batches(images, chunk):
        if total is None:
            total = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
        elif x.shape[1:] != total.shape:
            raise ValueError(f"per_pixel_mean needs images of one size: got "
                             f"{tuple(total.shape)} and {tuple(x.shape[1:])}")
        total += x.to(total.device, torch.float64).sum(0) / _unit(x)
        count += x.shape[0]
    if total is None or count == 0:
        raise ValueError("cannot take the mean of no images: expected a non-empty "
                         "(N, C, H, W) batch or iterable of images")
    return (total / count).to(torch.float32)


def per_channel_mean_std(images: Images, chunk: int = 1024
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (each float32 (C,), [0, 1] units) over all pixels of uint8
    (or float [0, 1]) images: a (N, C, H, W) tensor, or an iterable of images / batches
    (their sizes may differ: every pixel counts once)."""
    s: torch.Tensor | None = None
    s2 = torch.zeros(0, dtype=torch.float64)
    n = 0
    for x in _batches(images, chunk):
        x = x.to("cpu", torch.float64) / _unit(x)
        if s is None:
            s = torch.zeros(x.shape[1], dtype=torch.float64)
            s2 = torch.zeros(x.shape[1], dtype=torch.float64)
        elif x.shape[1] != s.shape[0]:
            raise ValueError(f"images have {s.shape[0]} and {x.shape[1]} channels")
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if s is None or n == 0:
        raise ValueError("cannot take the mean of no images: expected a non-empty "
                         "(N, C, H, W) batch or iterable of images")
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
    """The one normalizer: images -> `(x - mean) / std` on the images' device.

    Input: uint8 (-> float32 `x / 255`) or float images in [0, 1] (dtype kept), a batch
    (N, C, H, W) or one image (C, H, W). `mean` is per pixel (C, H, W) or per channel
    (C,) / (C, 1, 1) in [0, 1] units; `std` likewise, or None for no division. A per-pixel
    statistic is resized (bilinear, antialiased) to the input's H x W when they differ,
    e.g. a 224x224 ImageNet mean for 10-crop or multi-scale views (Sec. 3.4); the resized
    copy is cached per (size, device, dtype). The paper's recipes are the per-pixel
    training mean and no std (Sec. 3.4, Sec. 4.2): `Preprocess(per_pixel_mean(images))`.
    The same transform serves the test views (no augmentation).
    """

    def __init__(self, mean: torch.Tensor | Any, std: torch.Tensor | Any | None = None) -> None:
        self.mean = _as_stat(mean, "mean")
        self.std = None if std is None else _as_stat(std, "std")
        if self.std is not None and self.std.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"mean has {self.mean.shape[0]} channels but std has {self.std.shape[0]}"
            )
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def per_pixel(self) -> bool:
        return self.mean.shape[1:] != (1, 1)

    @staticmethod
    def _fit(stat: torch.Tensor, size: tuple[int, int], device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        """`stat` on `device` as `dtype`, a per-pixel one resized to `size`."""
        if stat.shape[1:] in ((1, 1), size):
            return stat.to(device, dtype)
        return F.interpolate(stat[None].to(device), size=size, mode="bilinear",
                             align_corners=False, antialias=True)[0].to(dtype)

    def stats_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, std or None) for input `x`: on its device, at its size, in the dtype of
        the output (float32 for uint8 input)."""
        if x.dim() not in (3, 4) or x.shape[-3] != self.mean.shape[0]:
            raise ValueError(
                f"expected a (N, {self.mean.shape[0]}, H, W) batch or a "
                f"({self.mean.shape[0]}, H, W) image, got {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        key = (tuple(x.shape[-2:]), x.device, dtype)
        stats = self._cache.get(key)
        if stats is None:
            size = (int(x.shape[-2]), int(x.shape[-1]))
            stats = (self._fit(self.mean, size, x.device, dtype),
                     None if self.std is None else self._fit(self.std, size, x.device, dtype))
            self._cache[key] = stats
        return stats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats_for(x)
        if x.is_floating_point():
            out = x.sub(mean)
        else:  # the hot loop (CIFAR batches on the device): one float copy, in place after
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

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: not the device copies
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        kind = "per-pixel" if self.per_pixel else "per-channel"
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
