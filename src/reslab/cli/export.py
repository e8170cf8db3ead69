"""`reslab export [MODEL] --weights W --format onnx|torchscript|safetensors`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from reslab.cli.flag_types import image_side, int_in
from reslab.errors import ReslabError
from reslab.interop import (
    EXPORT_SUFFIXES,
    check_export_target,
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
                   help="output file (default: beside the weights, e.g. W.onnx), new or a "
                   "regular file; with a trailing slash a folder (created if needed) to "
                   "write MODEL.onnx etc. into; an existing folder without the slash is "
                   "refused")
    p.add_argument("--input", type=image_side, default=None,
                   help="input side in pixels (default: 224 for ImageNet nets, 32 for CIFAR)")
    p.add_argument("--num-classes", type=int_in(1), default=None,
                   help="foreign weights: default from their fc layer (a reslab checkpoint "
                   "records its own)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], default=None,
                   help="foreign weights (a reslab checkpoint records its own)")
    p.add_argument("--torchvision-stride", action="store_true",
                   help="bottleneck stride on the 3x3 conv (torchvision/timm weights)")
    p.set_defaults(func=run)


def _refuse_unused(args: argparse.Namespace, recorded: Mapping, weights: Path) -> None:
    """ReslabError for a --num-classes / --shortcut / --torchvision-stride that differs from
    what a reslab checkpoint records: the checkpoint's own values are used."""
    flags = [("--num-classes", args.num_classes, "num_classes"),
             ("--shortcut", args.shortcut, "shortcut"),
             ("--torchvision-stride", False if args.torchvision_stride else None,
              "stride_in_1x1")]
    for flag, given, key in flags:
        if given is not None and given != recorded.get(key):
            raise ReslabError(f"{flag} does not apply to {weights}: it is a reslab checkpoint "
                              f"of {recorded.get('name')} and records its own {key} "
                              f"({recorded.get(key)}); drop the flag (it is for foreign "
                              "weights)")


def _make_folder(out: Path, flag_value: str) -> Path:
    """Create the folder of `--out DIR/` (ReslabError, one line, when it cannot be made)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReslabError(f"cannot create the folder --out {flag_value}: "
                          f"{e.strerror or e}") from None
    return out


def run(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    default_name = weights.name.split(".")[0].replace(":", "-") + EXPORT_SUFFIXES[args.format]
    into_folder = bool(args.out) and args.out.endswith(("/", os.sep))
    if args.out and into_folder:  # checked before the weights are read
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ReslabError(f"--out {args.out} names a folder (trailing slash), but "
                              f"{args.out.rstrip('/' + os.sep)} is not one")
    elif args.out and Path(args.out).is_dir():
        raise ReslabError(f"--out {args.out} is a folder: give the output file, e.g. "
                          f"--out {Path(args.out) / default_name}")
    elif args.out:
        check_export_target(args.out, "--out ")
    if args.model in (None, "auto"):
        obj = read_file(weights)
        if isinstance(obj.get("model_spec"), Mapping) and obj["model_spec"].get(
                "task") == "detection":  # `reslab detect train`'s (Tables 7-8)
            from reslab.detection.export import export_detector

            out = Path(args.out) if args.out else weights.with_name(default_name)
            if into_folder:
                out = _make_folder(out, args.out) / (obj["model_spec"]["name"]
                                                     + EXPORT_SUFFIXES[args.format])
            print(f"wrote {export_detector(weights, out, args.format)} ({args.format}, "
                  f"{obj['model_spec']['name']}, input: a list of 3 x H x W images in [0, 1])")
            return 0
        model, _ = model_from_checkpoint(obj, where=weights)
        _refuse_unused(args, model.reslab_spec.to_dict(), weights)
    else:
        obj = read_file(weights)
        spec_d = obj.get("model_spec") if isinstance(obj.get("model_spec"), dict) else {}
        if spec_d:
            _refuse_unused(args, spec_d, weights)
        num_classes = args.num_classes or spec_d.get("num_classes")
        if num_classes is None:  # infer from the classifier's rows
            state = read_state_dict(obj)
            fc = state.get("fc.weight", state.get("linear.weight"))
            num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else None
        stride = False if args.torchvision_stride else spec_d.get("stride_in_1x1")
        shortcut = args.shortcut or (spec_d.get("shortcut") if spec_d.get("residual") else None)
        spec = resolve(args.model, num_classes, shortcut, stride)
        model = load_weights(build(spec), obj, where=weights)
    spec = model.reslab_spec
    size = args.input if args.input is not None else (224 if spec.family == "imagenet" else 32)
    out = Path(args.out) if args.out else weights.with_name(default_name)
    if into_folder:
        out = _make_folder(out, args.out) / (spec.name + EXPORT_SUFFIXES[args.format])
    if out.resolve() == weights.resolve():
        raise ReslabError(f"--out {out} would overwrite the weights; choose another path")
    export_model(model, out, args.format, size)
    print(f"wrote {out} ({args.format}, {spec.name}, input N x 3 x {size} x {size})")
    return 0
