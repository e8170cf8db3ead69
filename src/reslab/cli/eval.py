"""`reslab eval`: top-1 / top-5 error of trained weights on a test split."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1/top-5 error of weights on a test split",
        description="Evaluate weights on the test split of --data with the single-view "
        "protocol of Sec. 4.2 (for --recipe imagenet: center crop, 10-crop or multi-scale, "
        "Sec. 3.4). A reslab checkpoint brings its own model and preprocessing; for "
        "foreign weights (torchvision, timm, safetensors, pytorch_resnet_cifar10) give "
        "--model, and --mean/--std if they were trained with another normalisation "
        "(default: the per-pixel mean of the training split, as the paper).",
    )
    p.add_argument("--model", default=None, help="network name (optional for reslab checkpoints)")
    p.add_argument("--weights", required=True, help="checkpoint, state_dict or safetensors file")
    p.add_argument("--data", default="cifar10", help="as for `reslab train`")
    p.add_argument("--data-root", default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="per-channel mean in [0, 1] units (foreign weights)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="per-channel std in [0, 1] units (foreign weights)")
    p.add_argument("--recipe", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--crops", type=int, choices=[1, 10], default=1,
                   help="imagenet recipe: 1 center crop or the paper's 10 crops")
    p.add_argument("--scales", type=int, nargs="+", default=None,
                   help="imagenet recipe: fully convolutional multi-scale testing, e.g. "
                   "224 256 384 480 640")
    p.add_argument("--batch-size", type=int, default=500)
    from reslab.cli.eval_imagenet import add_imagenet_arguments

    add_imagenet_arguments(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true",
                   help='print {"top1_error": ..., "top5_error": ..., "images": ...}')
    p.set_defaults(func=run)


def load_for_eval(model_name, weights, mean=None, std=None, data=None):
    """(model, preprocess, classes, checkpoint) from a reslab checkpoint or foreign weights.

    The file is read once (safely, `reslab.interop.read_file`); `checkpoint` is the reslab
    checkpoint dict, or None for foreign weights.
    """
    import torch

    from reslab.data import Preprocess, per_pixel_mean
    from reslab.errors import ReslabError
    from reslab.interop import load_weights, model_from_checkpoint, read_file
    from reslab.models.registry import build, resolve
    from reslab.train.checkpoint import FORMAT

    obj = read_file(weights)
    ckpt = None
    if obj.get("format") == FORMAT:
        model, ckpt = model_from_checkpoint(obj)
        if model_name and resolve(model_name).name != model.reslab_spec.name:
            raise ReslabError(f"{weights} holds a {model.reslab_spec.name}, not {model_name}")
        preprocess = Preprocess.from_dict(ckpt["preprocess"])
        classes = list(ckpt["classes"])
    else:
        if not model_name:
            raise ReslabError(f"{weights} is not a reslab checkpoint: say which network it is "
                              "with --model")
        if data is None:
            raise ReslabError("foreign weights need --data to know the classes")
        model = load_weights(build(resolve(model_name, len(data.classes))), obj)
        classes = list(data.classes)
        if mean is not None:
            preprocess = Preprocess(torch.tensor(mean),
                                    torch.tensor(std) if std is not None else None)
        else:
            preprocess = Preprocess(per_pixel_mean(data.train.images),
                                    torch.tensor(std) if std is not None else None)
    if data is not None and len(classes) != len(data.classes):
        raise ReslabError(f"the weights have {len(classes)} classes, the data "
                          f"{len(data.classes)}")
    return model, preprocess, classes, ckpt


def run(args: argparse.Namespace) -> int:
    from reslab.data import load_image_data
    from reslab.evaluate import evaluate_tensors
    from reslab.train.trainer import pick_device, pick_precision

    device = pick_device(args.device)
    if args.recipe == "imagenet":
        from reslab.cli.eval_imagenet import run_imagenet

        return run_imagenet(args, device)
    data = load_image_data(args.data, root=args.data_root)
    model, preprocess, _, _ = load_for_eval(args.model, args.weights, args.mean, args.std,
                                            data)
    model.to(device)
    result = evaluate_tensors(model, data.test.images, data.test.labels, preprocess,
                              args.batch_size, device, pick_precision("auto", device))
    out = {"top1_error": result.top1_error, "top5_error": result.top5_error,
           "images": result.images}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{model.reslab_spec.name} on {data.name} test ({result.images} images): "
              f"top-1 error {100 * result.top1_error:.2f}%, top-5 error "
              f"{100 * result.top5_error:.2f}%")
    return 0
