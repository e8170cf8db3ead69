"""A small, learnable synthetic data set for tests and smoke runs (no download).

Each class has a fixed smooth colour pattern; an image is its class pattern, shifted
by a few pixels, scaled in contrast, plus pixel noise. A small ResNet learns it in a
few hundred iterations; a constant guess scores 1 / num_classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reslab.data.dataset import ImageData, ImageSplit
from reslab.errors import ReslabError

DEFAULT_N_TRAIN = 2000
DEFAULT_N_TEST = 500


def _templates(num_classes: int, size: int, g: torch.Generator) -> torch.Tensor:
    # Low-frequency patterns: random 4x4 colour grids upsampled to size x size.
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    t = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return t / t.flatten(1).std(1)[:, None, None, None]


def _make_split(
    templates: torch.Tensor, n: int, g: torch.Generator, noise: float, max_shift: int
) -> ImageSplit:
    k = templates.shape[0]
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    x = templates[labels]
    if max_shift:
        # Shift each image cyclically by up to max_shift pixels: one roll per distinct
        # shift (at most (2 * max_shift + 1) ** 2 of them), not one per image.
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)
        code = (shifts[:, 0] + max_shift) * (2 * max_shift + 1) + (shifts[:, 1] + max_shift)
        for c in code.unique().tolist():
            dy, dx = divmod(c, 2 * max_shift + 1)
            idx = (code == c).nonzero().squeeze(1)
            x[idx] = x[idx].roll((dy - max_shift, dx - max_shift), dims=(2, 3))
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = x.mul_(contrast).add_(torch.randn(x.shape, generator=g), alpha=noise)
    images = x.mul_(40).add_(128).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    return ImageSplit(images, labels.to(torch.int64))


def load_synthetic(
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    *,
    num_classes: int = 10,
    size: int = 32,
    seed: int = 0,
    noise: float = 1.0,
    max_shift: int = 2,
) -> ImageData:
    """`num_classes` classes of `size` x `size` RGB images, deterministic from `seed`."""
    if n_train < 1 or n_test < 1 or num_classes < 2 or size < 4:
        raise ReslabError(
            f"synthetic data needs n_train, n_test >= 1, num_classes >= 2, size >= 4 "
            f"(got {n_train}, {n_test}, {num_classes}, {size})"
        )
    g = torch.Generator().manual_seed(seed)
    templates = _templates(num_classes, size, g)
    train = _make_split(templates, n_train, g, noise, max_shift)
    test = _make_split(templates, n_test, g, noise, max_shift)
    classes = [f"class{i}" for i in range(num_classes)]
    return ImageData(name="synthetic", classes=classes, train=train, test=test)


def parse_synthetic_spec(spec: str) -> dict[str, int]:
    """`synthetic[:N_TRAIN[:N_TEST[:SEED]]]` or `synthetic:key=value,...` -> kwargs."""
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    if not rest:
        return {}
    usage = (
        f"bad synthetic spec {spec!r}: use synthetic, synthetic:N_TRAIN:N_TEST[:SEED] or "
        "synthetic:n_train=N,n_test=M,num_classes=K,size=S,seed=X"
    )
    try:
        if "=" in rest:
            out = {}
            for item in rest.split(","):
                key, value = item.split("=", 1)
                key = key.strip()
                if key not in ("n_train", "n_test", "num_classes", "size", "seed", "max_shift"):
                    raise ValueError(key)
                out[key] = int(value)
            return out
        values = [int(v) for v in rest.split(":")]
    except ValueError:
        raise ReslabError(usage) from None
    if len(values) > 3:
        raise ReslabError(usage)
    return dict(zip(("n_train", "n_test", "seed"), values, strict=False))
