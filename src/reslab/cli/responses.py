"""`reslab responses`: per-layer response std of trained weights (Figure 7)."""

from __future__ import annotations

import argparse
import json

from reslab.analysis.responses import layer_response_stds, plot_responses
from reslab.data import load_image_data
from reslab.engine import pick_device
from reslab.errors import ReslabError
from reslab.inference import check_classes, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "responses",
        help="std of every 3x3 layer's response on a test split (Figure 7)",
        description="Standard deviation of each 3x3 layer's response (after BN, before the "
        "ReLU; in residual blocks the BN output before the addition) over the test split of "
        "--data, in network order, with the model in eval mode and the checkpoint's "
        "preprocessing (Figure 7, Sec. 4.2).",
    )
    p.add_argument("--model", default=None, help="network name (optional for reslab checkpoints)")
    p.add_argument("--weights", required=True, help="checkpoint, state_dict or safetensors file, "
                   "or a registry name such as cifar10-jpeg75:resnet20 (`reslab weights`)")
    p.add_argument("--data", default="cifar10", help="as for `reslab train`")
    p.add_argument("--data-root", default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true",
                   help='print {"model": ..., "layers": [{"name": ..., "std": ...}, ...]}')
    p.add_argument("--out", default=None, help="also plot them into this PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ReslabError("--batch-size must be >= 1")
    device = pick_device(args.device)
    foreign = args.model is not None
    data = load_image_data(args.data, root=args.data_root,
                           splits=("train", "test") if foreign else ("test",))
    loaded = load_model(args.weights, args.model, classes=data.classes,
                        train_images=data.train.images if foreign else None)
    check_classes(loaded, data.classes, f"{data.name} test")
    stds = layer_response_stds(loaded.model, data.test.images, loaded.preprocess,
                               args.batch_size, device)
    name = loaded.name
    if args.out:
        plot_responses({name: list(stds.values())}, args.out, title=f"{name} layer responses")
    if args.json:
        print(json.dumps({"model": name, "images": len(data.test),
                          "layers": [{"name": k, "std": v} for k, v in stds.items()]}))
    else:
        print(f"{name}: std of {len(stds)} 3x3 layer responses on {data.name} test "
              f"({len(data.test)} images)")
        for i, (k, v) in enumerate(stds.items(), 1):
            print(f"{i:4d}  {k:24s} {v:.4f}")
    return 0
