"""Evaluation: top-1 / top-5 error (Tables 2-4, 6).

The CIFAR test protocol is the single original view (Sec. 4.2); the ImageNet
10-crop and multi-scale protocols (Sec. 3.4) build on `topk_errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


@torch.no_grad()
def evaluate_tensors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Evaluate on uint8 images (N, C, H, W) with the single-view protocol.

    `preprocess` maps a uint8 batch on `device` to the float input of the model.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = {1: 0, 5: 0}
    loss_sum = 0.0
    n = labels.numel()
    for i in range(0, n, batch_size):
        x = images[i : i + batch_size].to(device, non_blocking=True)
        y = labels[i : i + batch_size].to(device, non_blocking=True)
        x = preprocess(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        for k, c in topk_correct(logits, y, (1, 5)).items():
            correct[k] += c
    model.train(was_training)
    return EvalResult(1 - correct[1] / n, 1 - correct[5] / n, loss_sum / n, n)
