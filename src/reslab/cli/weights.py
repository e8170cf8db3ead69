"""`reslab weights`: the registry of weights reslab trained; `reslab weights publish` adds one."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list the weights reslab trained (NAME:MODEL, for --weights and create_model)",
        description="List the registry of weights that reslab trained: each entry NAME:MODEL "
        "(e.g. cifar10-jpeg75:resnet20) with its data, the iterations done of those "
        "planned and its test error. Any --weights takes the name; Python: "
        "reslab.create_model('resnet20', weights='cifar10-jpeg75'). docs/weights.md is the "
        "model card. `reslab weights publish` adds an entry.",
    )
    p.add_argument("--model", default=None, help="only this network's entries")
    p.add_argument("--json", action="store_true", help="the entries as JSON")
    p.set_defaults(func=run_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    pub = actions.add_parser(
        "publish",
        help="publish a checkpoint as a registry entry",
        description="Write CHECKPOINT's network, training mean and classes as a safetensors "
        "file into the registry's folder (the package's weights/, $RESLAB_WEIGHTS_DIR or "
        "--registry), measure that file's test error on --data's test split (fp32, the "
        "recipe's protocol), and record the entry NAME:MODEL in registry.json with the "
        "run's command and machine (from run.json beside the checkpoint).",
    )
    pub.add_argument("checkpoint", help="a reslab checkpoint, e.g. RUN/last.pt")
    pub.add_argument("--name", required=True,
                     help="the weights' name: data and recipe, e.g. cifar10-jpeg75")
    pub.add_argument("--data", default=None,
                     help="data whose test split measures the error (default: the run's)")
    pub.add_argument("--data-root", default=None)
    pub.add_argument("--command", dest="train_command", default=None,
                     help="the command that trained it (default: run.json's)")
    pub.add_argument("--notes", default="", help="what else a user should know")
    pub.add_argument("--registry", default=None,
                     help="registry folder (default: $RESLAB_WEIGHTS_DIR, else the package's)")
    pub.add_argument("--replace", action="store_true", help="publish over an entry of that name")
    pub.add_argument("--device", default="cpu", help="device of the test (fp32)")
    pub.add_argument("--batch-size", type=int, default=500)
    pub.add_argument("--crops", type=int, choices=[1, 10], default=1,
                     help="ImageNet-recipe weights: 1 (centre crop, default) or 10 (10-crop "
                     "testing, Table 2's protocol) for the recorded error")
    pub.set_defaults(func=run_publish)


def _error(e) -> str:
    t = e.test_error
    return f"{100 * t['top1']:.2f}% ({t['wrong']}/{t['images']}, {t['precision']})"


def run_list(args: argparse.Namespace) -> int:
    from reslab.models.weights import list_weights, weights_dir

    entries = list_weights(args.model)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no weights published in {weights_dir()}"
              + (f" for {args.model}" if args.model else ""))
        return 0
    print(f"{'weights':32s} {'iterations':>15s} {'test error':>24s}  data")
    for e in entries:
        done = f"{e.iterations_done:,}/{e.iterations_planned:,}"
        print(f"{e.key:32s} {done:>15s} {_error(e):>24s}  {e.data.get('source', '?')} "
              f"({e.test_error.get('split', 'test split')})")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from reslab.errors import ReslabError
    from reslab.models.publish import publish

    if args.batch_size < 1:
        raise ReslabError("--batch-size must be >= 1")
    entry = publish(args.checkpoint, args.name, args.data, command=args.train_command,
                    notes=args.notes, registry=args.registry, replace=args.replace,
                    data_root=args.data_root, device=args.device, batch_size=args.batch_size,
                    crops=args.crops)
    print(json.dumps(entry.to_dict(), indent=2))
    print(f"published {entry.key}: {entry.path} ({entry.bytes:,} bytes, sha256 "
          f"{entry.sha256[:16]}...), test error {_error(entry)} at iteration "
          f"{entry.iterations_done:,} of {entry.iterations_planned:,}")
    return 0
