"""`reslab predict`: top-5 classes of images under trained weights."""

from __future__ import annotations

import argparse

import torch
from torchvision.transforms.v2 import functional as TF

from reslab.cli.flag_types import int_in
from reslab.cli.image_limit import add_max_image_pixels
from reslab.data.decode import decode_image_file
from reslab.engine import make_engine
from reslab.inference import load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes of images",
        description="Print the top-5 classes with probabilities for each image, using a "
        "reslab checkpoint's network, preprocessing and class names. Images are resized "
        "to the checkpoint's input size (32x32 for CIFAR nets).",
    )
    p.add_argument("--weights", required=True, help="a reslab checkpoint (best.pt, last.pt) or a "
                   "registry name such as cifar10-jpeg75:resnet20 (`reslab weights`)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--top", type=int_in(1), default=5, help="classes shown per image")
    p.add_argument("--device", default="auto")
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    engine = make_engine(args.device, "auto")
    loaded = load_model(args.weights)
    model = engine.prepare(loaded.model).eval()
    size = loaded.input_size or (loaded.crop or 32, loaded.crop or 32)
    for path in args.images:
        img = decode_image_file(path, hint=None)  # uint8 RGB; 16-bit scaled; bombs refused
        if tuple(img.shape[-2:]) != size:
            img = TF.resize(img, list(size), antialias=True)
        with torch.no_grad():
            probs = engine(model, loaded.preprocess(img[None].to(engine.device)))
            probs = probs.float().softmax(1)[0]
        top = probs.topk(min(args.top, len(loaded.classes)))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {loaded.classes[i]:20s} {100 * p:6.2f}%")
    return 0
