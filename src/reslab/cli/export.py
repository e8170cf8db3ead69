"""`reslab export [MODEL] --weights W --format onnx|torchscript|safetensors`."""

from __future__ import annotations

import argparse

from reslab.errors import ReslabError
from reslab.interop import (
    EXPORT_SUFFIXES,
    export_model,
    load_weights,
    model_from_checkpoint,
    read_file,
    read_state_dict,
)
from reslab.models.registry import build, resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a network to ONNX, TorchScript or safetensors",
        description="Load weights (a reslab checkpoint, a torchvision/timm state_dict, a "
        "pytorch_resnet_cifar10 checkpoint or a .safetensors file) into a network and export "
        "it. ONNX and TorchScript take N x 3 x SIZE x SIZE inputs with a dynamic batch size; "
        "safetensors keeps the model spec as metadata. MODEL may be omitted (or 'auto') "
        "when the weights are a reslab checkpoint.",
    )
    p.add_argument("model", nargs="?", default="auto",
                   help="model name, e.g. resnet50, resnet20; 'auto' (default): from the "
                   "reslab checkpoint's model spec")
    p.add_argument("--weights", required=True,
                   help="weights or checkpoint file, or a registry name such as "
                   "cifar10-jpeg75:resnet20 (`reslab weights`)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    p.add_argument("--out", default=None,
                   help="output file (default: beside the weights, e.g. W.onnx); a folder "
                   "is refused: name the file, e.g. FOLDER/W.onnx")
    p.add_argument("--input", type=int, default=None,
                   help="input side in pixels (default: 224 for ImageNet nets, 32 for CIFAR)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: from the checkpoint's model spec or its fc layer")
    p.add_argument("--shortcut", choices=["A", "B", "C"], default=None)
    p.add_argument("--torchvision-stride", action="store_true",
                   help="bottleneck stride on the 3x3 conv (torchvision/timm weights)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path


    weights = Path(args.weights)
    default_name = weights.name.split(".")[0].replace(":", "-") + EXPORT_SUFFIXES[args.format]
    if args.out and Path(args.out).is_dir():  # checked before the weights are read
        raise ReslabError(f"--out {args.out} is a folder: give the output file, e.g. "
                          f"--out {Path(args.out) / default_name}")
    if args.model in (None, "auto"):
        obj = read_file(weights)
        if isinstance(obj.get("model_spec"), dict) and obj["model_spec"].get(
                "task") == "detection":  # `reslab detect train`'s (Tables 7-8)
            from reslab.detection.export import export_detector

            out = Path(args.out) if args.out else weights.with_name(default_name)
            print(f"wrote {export_detector(weights, out, args.format)} ({args.format}, "
                  f"{obj['model_spec']['name']}, input: a list of 3 x H x W images in [0, 1])")
            return 0
        model, _ = model_from_checkpoint(obj)
    else:
        obj = read_file(weights)
        spec_d = obj.get("model_spec") if isinstance(obj.get("model_spec"), dict) else {}
        num_classes = args.num_classes or spec_d.get("num_classes")
        if num_classes is None:  # infer from the classifier's rows
            state = read_state_dict(obj)
            fc = state.get("fc.weight", state.get("linear.weight"))
            num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else None
        stride = False if args.torchvision_stride else spec_d.get("stride_in_1x1")
        shortcut = args.shortcut or (spec_d.get("shortcut") if spec_d.get("residual") else None)
        spec = resolve(args.model, num_classes, shortcut, stride)
        model = load_weights(build(spec), obj)
    spec = model.reslab_spec
    size = args.input if args.input is not None else (224 if spec.family == "imagenet" else 32)
    if size < 1:
        raise ReslabError(f"--input must be positive, got {size}")
    out = Path(args.out) if args.out else weights.with_name(default_name)
    if out.resolve() == weights.resolve():
        raise ReslabError(f"--out {out} would overwrite the weights; choose another path")
    export_model(model, out, args.format, size)
    print(f"wrote {out} ({args.format}, {spec.name}, input N x 3 x {size} x {size})")
    return 0
