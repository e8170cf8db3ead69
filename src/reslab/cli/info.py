"""`reslab info MODEL`: a Table-1 style view of one network."""

from __future__ import annotations

import argparse

from reslab.analysis.complexity import format_info
from reslab.errors import ReslabError
from reslab.models.registry import build, resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show a network's stages, parameters and multiply-adds",
        description="Print a Table-1 style view of a network: each stage's output size and "
        "blocks, the parameter count, and the multiply-adds of one forward pass measured "
        "with torch.utils.flop_counter.",
    )
    p.add_argument("model", help="model name, e.g. resnet50, resnet20, plain34")
    p.add_argument("--input", type=int, default=None,
                   help="input side in pixels (default: 224 for ImageNet nets, 32 for CIFAR)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--shortcut", choices=["A", "B", "C"], default=None)
    p.add_argument("--torchvision-stride", action="store_true",
                   help="bottleneck stride on the 3x3 conv (torchvision) instead of the 1x1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = resolve(args.model, args.num_classes, args.shortcut,
                   False if args.torchvision_stride else None)
    size = args.input if args.input is not None else (224 if spec.family == "imagenet" else 32)
    if size < 1:
        raise ReslabError(f"--input must be positive, got {size}")
    try:
        print(format_info(build(spec), size))
    except RuntimeError as e:
        raise ReslabError(f"{spec.name} cannot take a {size}x{size} input: {e}") from None
    return 0
