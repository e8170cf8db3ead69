"""`reslab eval --recipe imagenet`: the testing protocols of Sec. 3.4 on `ROOT/val`.

Centre crop (`--crops 1`), the standard 10-crop test (`--crops 10`, Tables 2-3) or
fully-convolutional multi-scale testing (`--scales 224 256 384 480 640`, Table 4), with
the checkpoint's mean subtraction (a per-pixel mean is resized to each view's size).
"""

from __future__ import annotations

import argparse
import json
import os
from types import SimpleNamespace

import torch


def add_imagenet_arguments(p: argparse.ArgumentParser) -> None:
    """The input-size flags of ImageNet testing (default: the checkpoint's, else the paper's)."""
    p.add_argument("--test-resize", type=int, default=None,
                   help="imagenet recipe: shorter side before the crops (default: the "
                   "checkpoint's, paper 256)")
    p.add_argument("--crop", type=int, default=None,
                   help="imagenet recipe: crop size (default: the checkpoint's, paper 224)")
    p.add_argument("--workers", type=int, default=0,
                   help="imagenet recipe: DataLoader workers decoding the images")


def _sizes(args: argparse.Namespace, ckpt: dict | None) -> tuple[int, int]:
    """(test resize, crop): the flags, else the training run's, else the paper's."""
    from reslab.train.imagenet_recipe import IMAGENET_RECIPE

    extra = ((ckpt or {}).get("config") or {}).get("extra") or {}
    resize = args.test_resize or extra.get("test_resize") or IMAGENET_RECIPE.test_resize
    crop = args.crop or extra.get("crop") or IMAGENET_RECIPE.crop
    return int(resize), int(crop)


def run_imagenet(args: argparse.Namespace, device: torch.device) -> int:
    """Evaluate `args.weights` on `args.data`/val; print top-1/top-5 (or JSON)."""
    from reslab.cli.eval import load_for_eval
    from reslab.data.imagenet import IMAGENET_MEAN, ImageFolderDataset, Normalize
    from reslab.errors import ReslabError
    from reslab.evaluate import evaluate_imagenet
    from reslab.train.trainer import pick_precision

    root = args.data
    val = ImageFolderDataset(os.path.join(root, "val"))
    # A reslab checkpoint brings its own mean; foreign weights take per-channel statistics
    # from the flags (torchvision's by default). The weights must fit ROOT/val's classes.
    model, preprocess, _, ckpt = load_for_eval(
        args.model, args.weights, args.mean or IMAGENET_MEAN, args.std,
        SimpleNamespace(classes=val.classes, train=None))
    mean, std = preprocess.mean, preprocess.std
    resize, crop = _sizes(args, ckpt)
    if args.scales is not None and args.crops != 1:
        raise ReslabError("--scales tests whole images: use it with --crops 1")
    if crop > resize:
        raise ReslabError(f"--crop {crop} must be <= --test-resize {resize}")
    model.to(device)
    result = evaluate_imagenet(
        model, val, crops=args.crops, scales=args.scales, device=device,
        normalize=Normalize(mean, std).to(device), resize=resize, crop=crop,
        images_per_batch=max(1, args.batch_size // (10 if args.crops == 10 else 1)),
        workers=args.workers, autocast_dtype=pick_precision("auto", device))
    out = {"top1_error": result.top1_error, "top5_error": result.top5_error,
           "images": result.images}
    if args.json:
        print(json.dumps(out))
    else:
        protocol = (f"multi-scale {'/'.join(map(str, args.scales))}" if args.scales else
                    f"{args.crops}-crop {crop} of shorter side {resize}")
        print(f"{model.reslab_spec.name} on {root}/val ({result.images} images, {protocol}): "
              f"top-1 error {100 * result.top1_error:.2f}%, top-5 error "
              f"{100 * result.top5_error:.2f}%")
    return 0
