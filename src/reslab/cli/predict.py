"""`reslab predict`: top-5 classes of images under trained weights."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes of images",
        description="Print the top-5 classes with probabilities for each image, using a "
        "reslab checkpoint's network, preprocessing and class names. Images are resized "
        "to the checkpoint's input size (32x32 for CIFAR nets).",
    )
    p.add_argument("--weights", required=True, help="a reslab checkpoint (best.pt, last.pt)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as TF

    from reslab.cli.eval import load_for_eval
    from reslab.errors import ReslabError
    from reslab.train.trainer import pick_device

    device = pick_device(args.device)
    model, preprocess, classes, _ = load_for_eval(None, args.weights)
    model.to(device).eval()
    mean = preprocess.mean
    size = tuple(mean.shape[-2:]) if mean.dim() == 3 and mean.shape[-1] > 1 else (32, 32)
    for path in args.images:
        try:
            img = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as e:
            raise ReslabError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None
        if tuple(img.shape[-2:]) != size:
            img = TF.resize(img, list(size), antialias=True)
        with torch.no_grad():
            probs = model(preprocess(img[None].to(device))).softmax(1)[0]
        top = probs.topk(min(args.top, len(classes)))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {classes[i]:20s} {100 * p:6.2f}%")
    return 0
