"""Evaluation: top-1 / top-5 error (Tables 2-4, 6).

The CIFAR test protocol is the single original view (Sec. 4.2); the ImageNet
10-crop and multi-scale protocols (Sec. 3.4) build on `topk_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from reslab.data.imagenet import list_collate
from reslab.engine import Engine
from reslab.errors import ReslabError


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, int]:
    """How many rows have their label among the top-k scores, for each k (capped at C)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return {k: int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks}


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                ) -> dict[int, float]:
    """Top-k error (fraction in [0, 1]) for each k."""
    n = labels.numel()
    return {k: 1.0 - c / n for k, c in topk_correct(logits, labels, ks).items()}


@dataclass
class EvalResult:
    """Top-1/top-5 error (fractions), mean cross-entropy loss and the image count."""

    top1_error: float
    top5_error: float
    loss: float
    images: int

    def to_dict(self) -> dict:
        return {"top1_error": self.top1_error, "top5_error": self.top5_error,
                "loss": self.loss, "images": self.images}


class _EvalMode:
    """Put a model in eval mode for a block and restore its mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def accumulate_errors(sums: list[float], logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one batch to `sums` = [loss sum, top-1 wrong, top-5 wrong, images] (the form
    that is summed over batches and, under DDP, all-reduced over ranks)."""
    correct = topk_correct(logits, labels, (1, 5))
    n = labels.numel()
    sums[0] += float(F.cross_entropy(logits, labels, reduction="sum"))
    sums[1] += n - correct[1]
    sums[2] += n - correct[5]
    sums[3] += n


@torch.no_grad()
def error_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    engine: Engine,
) -> list[float]:
    """The one evaluation loop: [loss sum, top-1 wrong, top-5 wrong, images] over `batches`
    of (x, y) (the form summed over ranks under DDP).

    Each x (uint8, or float in [0, 1]) is moved to `engine.device` and mapped to model input
    by `preprocess` (a `Preprocess`) there; `engine(model, x)` runs the forward pass, with
    the model in eval mode (its mode is restored after). Single view: the CIFAR test
    protocol (Sec. 4.2) or a centre crop (Sec. 3.4).
    """
    sums = [0.0, 0.0, 0.0, 0.0]
    with _EvalMode(model):
        for x, y in batches:
            x = preprocess(x.to(engine.device, non_blocking=True))
            y = torch.as_tensor(y).to(engine.device, non_blocking=True)
            accumulate_errors(sums, engine(model, x).float(), y)
    return sums


def _slices(images: torch.Tensor, labels: torch.Tensor, batch_size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, labels.numel(), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


def evaluate_tensors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Evaluate on uint8 images (N, C, H, W) with the single-view protocol (`error_sums`).

    `preprocess` maps a uint8 batch on `device` to the float input of the model.
    """
    if labels.numel() == 0:
        raise ReslabError("nothing to evaluate: no images")
    engine = Engine(torch.device(device), autocast_dtype, channels_last)
    loss_sum, wrong1, wrong5, n = error_sums(model, _slices(images, labels, batch_size),
                                             preprocess, engine)
    return EvalResult(wrong1 / n, wrong5 / n, loss_sum / n, int(n))


# ---------------------------------------------------------------------------------------
# ImageNet testing protocols (Sec. 3.4): single centre crop, 10-crop, multi-scale.

_AVERAGES = ("softmax", "logits")


def _check_average(average: str) -> None:
    if average not in _AVERAGES:
        raise ReslabError(f"average must be one of {_AVERAGES}, got {average!r}")


def _scores(model: nn.Module, x: torch.Tensor, average: str) -> torch.Tensor:
    """Softmax probabilities (average="softmax") or logits of a batch, in float32."""
    out = model(x).float()
    return out.softmax(dim=1) if average == "softmax" else out


def ten_crops(img: torch.Tensor, crop: int = 224) -> torch.Tensor:
    """The 10 test crops of Sec. 3.4 (after AlexNet): the 4 corners and the centre of the
    image, then the same 5 of its horizontal flip, stacked on a new first dim:
    (10, ..., C, crop, crop) for an image (..., C, H, W).

    Order (torchvision's `ten_crop`): top-left, top-right, bottom-left, bottom-right,
    centre, then those 5 taken from the flipped image (so index 5 = the flipped image's
    top-left = the flip of the original's top-right).
    """
    h, w = img.shape[-2:]
    if crop > h or crop > w:
        raise ReslabError(f"cannot take {crop}x{crop} crops of a {h}x{w} image")
    return torch.stack(TF.ten_crop(img, [crop, crop]))


@torch.no_grad()
def ten_crop_logits(model: nn.Module, images: torch.Tensor, crop: int = 224,
                    average: str = "softmax", normalize: Callable | None = None
                    ) -> torch.Tensor:
    """10-crop testing (Sec. 3.4): the mean over the 10 crops of the softmax scores
    (`average="softmax"`, the paper's; the result is then probabilities, not logits) or
    of the logits (`average="logits"`).

    `images`: model-ready (C, H, W) or (N, C, H, W) of one size, or, with `normalize` (a
    `Preprocess` or any callable), float images that it maps to model input crop by crop.
    Returns (K,) or (N, K).
    """
    _check_average(average)
    single = images.dim() == 3
    x = images[None] if single else images
    crops = ten_crops(x, crop)  # (10, N, C, crop, crop)
    n = x.shape[0]
    flat = crops.flatten(0, 1)
    if normalize is not None:
        flat = normalize(flat)
    with _EvalMode(model):
        s = _scores(model, flat, average).view(10, n, -1).mean(0)
    return s[0] if single else s


@torch.no_grad()
def multiscale_logits(model: nn.Module, image: torch.Tensor,
                      scales: Sequence[int] = (224, 256, 384, 480, 640), flip: bool = False,
                      average: str = "softmax", normalize: Callable | None = None
                      ) -> torch.Tensor:
    """Fully-convolutional multi-scale testing (Sec. 3.4, Table 4): resize the shorter side
    to each scale, run the whole image through the net (ours end in AdaptiveAvgPool2d, so
    any size works: the pool of the conv output is the average of the fully-convolutional
    score map's inputs), and average the softmax scores (or logits) over the scales, and
    over the horizontal flips too with `flip=True`.

    `image`: float (C, H, W) or (N, C, H, W), model-ready or mapped by `normalize` (a
    `Preprocess` or any callable) after each resize (a `Preprocess` resizes a per-pixel
    mean to the view). Returns (K,) or (N, K).
    """
    _check_average(average)
    if not scales:
        raise ReslabError("multiscale_logits needs at least one scale")
    single = image.dim() == 3
    x = image[None] if single else image
    total = None
    views = 0
    with _EvalMode(model):
        for s in scales:
            v = TF.resize(x, [int(s)], antialias=True)
            if not v.is_floating_point():
                v = v.float() / 255
            if normalize is not None:
                v = normalize(v)
            batch = torch.cat([v, v.flip(-1)]) if flip else v
            sc = _scores(model, batch, average)
            if flip:
                sc = sc.view(2, x.shape[0], -1).sum(0)
            total = sc if total is None else total + sc
            views += 2 if flip else 1
    out = total / views
    return out[0] if single else out


def _loss(scores: torch.Tensor, labels: torch.Tensor, average: str) -> float:
    """Summed cross-entropy: NLL of averaged probabilities, or CE of averaged logits."""
    if average == "softmax":
        return float(F.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum"))
    return float(F.cross_entropy(scores, labels, reduction="sum"))


def _as_float(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255 if not img.is_floating_point() else img


@torch.no_grad()
def imagenet_batch_scores(
    model: nn.Module,
    data,
    crops: int = 1,
    scales: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    normalize: Callable | None = None,
    resize: int = 256,
    crop: int = 224,
    flip: bool = False,
    average: str = "softmax",
    images_per_batch: int = 25,
    workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, labels) per batch under an ImageNet testing protocol (Sec. 3.4, Tables 2-4):
    the one loop behind `evaluate_imagenet` and `evaluate_imagenet_scores`.

    `data` is a Dataset of `(image, label)` or an iterable (DataLoader) of `(images,
    labels)` batches, where images are
      * float batches (N, C, crop, crop): with crops=1 and no scales, passed to the model as
        they are (after `normalize`, if given: so pass float [0, 1] batches with it,
        model-ready ones without), or
      * uint8 (or float [0, 1]) images at their original size, (C, H, W) each (a Dataset
        such as `ImageFolderDataset(root / "val")`, or lists from a loader), or a
        same-size (N, C, H, W) uint8 batch; `normalize` (a `reslab.data.Preprocess`,
        which resizes a per-pixel mean to each view, or any callable) maps each float
        [0, 1] view to model input.
    Protocols for raw images: crops=1: shorter side `resize`, centre crop; crops=10:
    shorter side `resize`, `ten_crops`; `scales`: `multiscale_logits` (whole images,
    `flip` adds their flips). Scores are averaged as softmax (the paper) or logits.
    """
    _check_average(average)
    if crops not in (1, 10):
        raise ReslabError(f"crops must be 1 or 10, got {crops}")
    if scales is not None and crops != 1:
        raise ReslabError("multi-scale testing uses whole images: pass crops=1 with scales")
    device = torch.device(device)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(
            data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=images_per_batch,
                                           num_workers=workers, collate_fn=list_collate)

    def views_of(img: torch.Tensor) -> torch.Tensor:
        img = TF.resize(img.to(device, non_blocking=True), [resize], antialias=True)
        img = _as_float(img)
        v = ten_crops(img, crop) if crops == 10 else TF.center_crop(img, [crop, crop])[None]
        return normalize(v) if normalize is not None else v

    with _EvalMode(model), torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                          enabled=autocast_dtype is not None):
        for images, labels in data:
            labels = torch.as_tensor(labels).to(device)
            if (isinstance(images, torch.Tensor) and images.dim() == 4
                    and images.is_floating_point() and scales is None and crops == 1):
                x = images.to(device, non_blocking=True)
                scores = _scores(model, normalize(x) if normalize is not None else x, average)
            elif scales is not None:
                scores = torch.stack([
                    multiscale_logits(model, _as_float(img.to(device)), scales, flip,
                                      average, normalize) for img in images])
            else:
                v = torch.cat([views_of(img) for img in images])
                per = 10 if crops == 10 else 1
                scores = _scores(model, v, average).view(len(images), per, -1).mean(1)
            yield scores, labels


def evaluate_imagenet(model: nn.Module, data, crops: int = 1,
                      scales: Sequence[int] | None = None, average: str = "softmax",
                      **options: Any) -> EvalResult:
    """Top-1/top-5 error and loss with an ImageNet testing protocol (Sec. 3.4); `options`
    are `imagenet_batch_scores`'s (device, normalize, resize, crop, flip, ...)."""
    correct, loss_sum, n = {1: 0, 5: 0}, 0.0, 0
    for scores, labels in imagenet_batch_scores(model, data, crops, scales, average=average,
                                                **options):
        loss_sum += _loss(scores, labels, average)
        for k, c in topk_correct(scores, labels, (1, 5)).items():
            correct[k] += c
        n += labels.numel()
    if n == 0:
        raise ReslabError("nothing to evaluate: the dataset is empty")
    return EvalResult(1 - correct[1] / n, 1 - correct[5] / n, loss_sum / n, n)


def evaluate_imagenet_scores(model: nn.Module, data, crops: int = 1,
                             scales: Sequence[int] | None = None, **options: Any
                             ) -> torch.Tensor:
    """Per-image softmax scores (N, K), on the CPU, under an ImageNet testing protocol: what
    an ensemble averages over its members (Table 5)."""
    parts = [s.float().cpu() for s, _ in imagenet_batch_scores(model, data, crops, scales,
                                                                average="softmax", **options)]
    if not parts:
        raise ReslabError("nothing to evaluate: the dataset is empty")
    return torch.cat(parts)
