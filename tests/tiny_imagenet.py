"""A tiny ImageNet-layout folder for tests: ROOT/{train,val}/class<k>/img<i>.JPEG."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import write_jpeg

# Input sizes that keep the ImageNet recipe cheap on CPU (the paper's: 256-480, 224, 256).
SMALL = ["--scale", "40", "56", "--crop", "32", "--test-resize", "36"]


def make_tiny_imagenet(root: Path, classes: int = 3, train: int = 8, val: int = 3) -> Path:
    """`classes` x (`train`, `val`) JPEGs of 64x48 / 48x64, brightness depending on the class."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (48, 64) if i % 2 else (64, 48)
                img = (torch.rand(3, h, w, generator=g) * 80 + 60 * c).clamp(0, 255)
                write_jpeg(img.to(torch.uint8), str(d / f"img{i}.JPEG"))
    return root
