"""`reslab eval`: top-1 / top-5 error of trained weights (one model or an ensemble)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch

from reslab.cli.flag_types import image_side, int_in, worker_count
from reslab.cli.image_limit import add_max_image_pixels
from reslab.data import load_image_data
from reslab.data.image_root import imagenet_root
from reslab.data.imagenet import ImageFolderDataset
from reslab.engine import PRECISIONS, make_engine
from reslab.errors import ReslabError
from reslab.inference import (
    LoadedModel,
    check_classes,
    check_ensemble,
    cifar_scores,
    errors_of,
    imagenet_scores,
    load_model,
)
from reslab.models.registry import resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1/top-5 error of weights (or of an ensemble) on a test split",
        description="Evaluate weights on the test split of --data with the protocol of the "
        "recipe they were trained with (a reslab checkpoint records it; --recipe "
        "overrides): CIFAR (Sec. 4.2) tests the single original view of the test split; "
        "ImageNet (Sec. 3.4) tests ROOT/val with a centre crop, the 10-crop test (--crops "
        "10, Tables 2-3) or fully-convolutional multi-scale testing (--scales 224 256 384 "
        "480 640, Table 4). Several --weights are an ensemble: their softmax scores are "
        "averaged (Table 5); members may differ in architecture. For foreign weights "
        "(torchvision, timm, safetensors, pytorch_resnet_cifar10) give --model, and "
        "--mean/--std if they were trained with another normalisation.",
    )
    p.add_argument("--model", default=None, help="network name (optional for reslab checkpoints)")
    p.add_argument("--weights", required=True, nargs="+", metavar="W",
                   help="checkpoint, state_dict or safetensors file, or a registry name "
                   "such as cifar10-jpeg75:resnet20 (`reslab weights`); several: an ensemble")
    p.add_argument("--data", default="cifar10", help="as for `reslab train`")
    p.add_argument("--data-root", default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="per-channel mean in [0, 1] units (foreign weights)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="per-channel std in [0, 1] units (foreign weights)")
    p.add_argument("--recipe", choices=["cifar", "imagenet"], default=None,
                   help="testing protocol (default: the checkpoint's recipe)")
    p.add_argument("--crops", type=int, choices=[1, 10], default=1,
                   help="imagenet protocol: 1 centre crop or the paper's 10 crops")
    p.add_argument("--scales", type=image_side, nargs="+", default=None,
                   help="imagenet protocol: fully convolutional multi-scale testing, e.g. "
                   "224 256 384 480 640")
    p.add_argument("--test-resize", type=image_side, default=None,
                   help="imagenet protocol: shorter side before the crops (default: the "
                   "checkpoint's, paper 256)")
    p.add_argument("--crop", type=image_side, default=None,
                   help="imagenet protocol: crop size (default: the checkpoint's, paper 224)")
    p.add_argument("--workers", type=worker_count, default=0,
                   help="imagenet protocol: DataLoader workers decoding the images")
    p.add_argument("--batch-size", type=int_in(1), default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="as for `reslab train` (auto: bf16 on CUDA and on CPUs with native "
                   "bf16); fp32 gives errors free of bf16 rounding")
    p.add_argument("--json", action="store_true",
                   help='print {"top1_error": ..., "top5_error": ..., "images": ..., '
                   '"precision": ...}')
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.scales is not None and args.crops != 1:
        raise ReslabError("--scales tests whole images: use it with --crops 1")
    if args.model and len(args.weights) > 1:
        raise ReslabError("--model names the network of one weights file; ensembles take "
                          "reslab checkpoints")


def _imagenet_protocol(loaded: LoadedModel, args: argparse.Namespace) -> str:
    loaded.test_resize = args.test_resize or loaded.test_resize
    loaded.crop = args.crop or loaded.crop
    if loaded.crop > loaded.test_resize:
        raise ReslabError(f"--crop {loaded.crop} must be <= --test-resize {loaded.test_resize}")
    if args.scales:
        return f"multi-scale {'/'.join(map(str, args.scales))}"
    return f"{args.crops}-crop {loaded.crop} of shorter side {loaded.test_resize}"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    engine = make_engine(args.device, args.precision)
    members = [] if args.model else [load_model(w, recipe=args.recipe) for w in args.weights]
    for m in members:  # --test-resize / --crop set every member's protocol
        if m.recipe == "imagenet":
            m.test_resize, m.crop = args.test_resize or m.test_resize, args.crop or m.crop
    if len(members) > 1:
        check_ensemble(members, args.weights)
    recipe = args.recipe or (members[0].recipe if members else
                             "imagenet" if resolve(args.model).family == "imagenet" else "cifar")
    unused = [flag for flag, value in (("--crops", args.crops != 1), ("--scales", args.scales),
                                       ("--test-resize", args.test_resize),
                                       ("--crop", args.crop)) if value]
    if recipe == "cifar" and unused:
        raise ReslabError(f"{', '.join(unused)}: options of the ImageNet protocol; these "
                          "weights are tested with the CIFAR one (the single original view, "
                          "Sec. 4.2; --recipe imagenet chooses the other)")
    if recipe == "imagenet":  # reads ROOT/val only
        split = ImageFolderDataset(os.path.join(imagenet_root(args.data), "val"))
        if members and set(members[0].classes) < set(split.classes):
            split.restrict(members[0].classes)  # trained with --classes K
        classes, labels, where = split.classes, torch.tensor(split.targets), f"{args.data}/val"
        train_images = None
    else:  # reads the test split only, unless foreign weights need the training mean
        need_train = bool(args.model) and args.mean is None
        data = load_image_data(args.data, root=args.data_root,
                               splits=("train", "test") if need_train else ("test",))
        classes, labels, where = data.classes, data.test.labels, f"{data.name} test"
        train_images = data.train.images if need_train else None
    if args.model:
        members = [load_model(args.weights[0], args.model, classes=classes, mean=args.mean,
                              std=args.std, train_images=train_images, recipe=recipe)]
    scores, protocol = None, "single view"
    for loaded in members:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_classes(loaded, classes, where)
        for w in caught:
            print(f"reslab eval: warning: {w.message}", file=sys.stderr)
        if recipe == "imagenet":
            protocol = _imagenet_protocol(loaded, args)
            s = imagenet_scores(loaded, split, engine, args.crops, args.scales,
                                max(1, args.batch_size // (10 if args.crops == 10 else 1)),
                                args.workers)
        else:
            s = cifar_scores(loaded, data.test.images, engine, args.batch_size)
        scores = s if scores is None else scores + s
    result = errors_of(scores / len(members), labels)
    out = {"top1_error": result.top1_error, "top5_error": result.top5_error,
           "images": result.images, "precision": engine.precision}
    if len(members) > 1:
        out["members"] = [m.name for m in members]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{' + '.join(m.name for m in members)} on {where} ({result.images} images, "
              f"{protocol}): top-1 error {100 * result.top1_error:.2f}%, top-5 error "
              f"{100 * result.top5_error:.2f}%")
    return 0
