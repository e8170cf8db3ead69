"""`reslab reproduce`: the paper's experiments, one command each: CIFAR-10 (Figures 1, 6, 7,
Table 6, the shortcut options), ImageNet (Tables 2-5, Figure 4) and detection (Tables 7-8)."""

from __future__ import annotations

import argparse
import shlex
import sys

from reslab.cli.flag_types import int_in, long_side, per_image, short_side, worker_count
from reslab.cli.image_limit import add_max_image_pixels
from reslab.engine import PRECISIONS
from reslab.errors import ReslabError
from reslab.experiments import (
    DETECTION_EXPERIMENTS,
    EXPERIMENTS,
    IMAGENET_EXPERIMENTS,
    Settings,
    describe,
    reproduce,
)


def register(sub: argparse._SubParsersAction) -> None:
    experiments = "\n".join(f"  {name:10s} {describe(name)}" for name in EXPERIMENTS)
    p = sub.add_parser(
        "reproduce",
        help="reproduce a figure or table of the paper (CIFAR-10 or ImageNet)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce one of the paper's experiments: train every net it needs "
        "with the paper's recipe (CIFAR: Sec. 4.2 on one data load; ImageNet: Sec. 3.4 on "
        "an image folder ROOT/train, ROOT/val), then write results.json, the figures and "
        "report.md (measured numbers beside the paper's) into --out.\n\n"
        "Experiments:\n" + experiments + "\n\n"
        "Runs live in OUT/runs/<label>; re-running the same command reuses finished runs "
        "and resumes an unfinished one, so Ctrl-C is safe; a folder holding a run made "
        "with other settings is refused. figure7 reuses the runs of figure6/figure1, "
        "figure4 those of table2, table4/table5 those of table3, in the same --out. "
        "--budget 0.1 trains every CIFAR net for 6400 iterations (milestones scaled), every "
        "ImageNet net for 60000. Under torchrun each run uses all the processes (DDP) and "
        "rank 0 writes the report (docs/distributed.md).",
    )
    p.add_argument("experiment", choices=EXPERIMENTS, metavar="EXPERIMENT",
                   help=f"one of {', '.join(EXPERIMENTS)}")
    p.add_argument("--data", default="cifar10", help="as for `reslab train` (default cifar10)")
    p.add_argument("--data-root", default=None, help="where cifar10 lives")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction of the paper's iterations per run (64k CIFAR, 60e4 "
                   "ImageNet), in (0, 10] (default 1.0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="table6: runs per net; reports best and mean +- std (default 1); "
                   "precision: runs per net and precision (>= 2; 3+ advised)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="as for `reslab train` (auto: bf16 on CUDA and on CPUs with native "
                   "bf16, else fp32)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global mini-batch (default: the paper's, 128 CIFAR, 256 ImageNet)")
    p.add_argument("--eval-points", type=int, default=40,
                   help="evaluations per run, the points of the curves (default 40)")
    p.add_argument("--models", default=None,
                   help="figure6/table6/figure7/precision: comma-separated nets instead of the "
                   "paper's set, e.g. plain20,plain56,resnet20,resnet56; ImageNet "
                   "experiments: only these of the table's runs (labels such as resnet34-B, "
                   "or net names); table7/table8: the backbones (default vgg16,resnet101; "
                   "e.g. plain34,resnet34)")
    p.add_argument("--with-1202", action="store_true",
                   help="figure6/table6: add ResNet-1202 (19.4M parameters; slow)")
    p.add_argument("--with-plain110", action="store_true", help="figure6: add plain-110")
    p.add_argument("--depth", type=int, default=None,
                   help="shortcuts: the CIFAR depth (6n+2; default 20)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train N runs at once in worker processes, spread over the visible "
                   "GPUs (several small CIFAR runs share one GPU well) or over the CPU cores "
                   "(threads divided); finished runs are still skipped (default 1)")
    g = p.add_argument_group("ImageNet experiments (table2, figure4, table3, table4, table5)")
    g.add_argument("--classes", type=int, default=None, metavar="K",
                   help="train and test on the first K classes (ImageNet-100 style); the "
                   "report then says its numbers are not comparable with the paper's")
    g.add_argument("--images-per-class", type=int, default=None, metavar="N",
                   help="at most N training images per class")
    g.add_argument("--scale", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="shorter side drawn from [MIN, MAX] (paper: 256 480)")
    g.add_argument("--crop", type=int, default=None, help="crop size (paper: 224)")
    g.add_argument("--test-resize", type=int, default=None,
                   help="shorter side before the test crops (paper: 256)")
    g.add_argument("--workers", type=worker_count, default=None, help="DataLoader decoding workers")
    g.add_argument("--iterations", type=int, default=None,
                   help="iterations per run, instead of --budget (e.g. a number of epochs of "
                   "a small folder)")
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="divide lr by 10 at these iterations (--lr-policy step) instead of on "
                   "plateaus")
    g.add_argument("--lr-policy", choices=["step", "plateau"], default=None,
                   help="plateau (Sec. 3.4, the default): lr /10 when the validation error "
                   "stops falling; step: at --milestones (default 50%% and 75%% of the run)")
    d = p.add_argument_group("detection experiments (table7, table8): Faster R-CNN, c4 design")
    d.add_argument("--weights", default=None, metavar="NET=FILE[,NET=FILE]",
                   help="ImageNet classifier weights of the backbones, e.g. "
                   "resnet101=r101.pt,vgg16=vgg16.pth (a net without: from scratch)")
    d.add_argument("--min-size", type=short_side, default=None, help="shorter side (paper: 600)")
    d.add_argument("--max-size", type=long_side, default=None,
                   help="longer side at most (paper: 1000)")
    d.add_argument("--train-split", default=None,
                   help="default trainval (table7), train2014 (table8)")
    d.add_argument("--val-split", default=None, help="default test (table7), val2014 (table8)")
    d.add_argument("--trainable-layers", type=int_in(0, 5), default=None,
                   help="backbone stages trained from the top, 0..5 (default 3 with weights)")
    d.add_argument("--roi-batch-size", type=per_image, default=None,
                   help="RoIs per image (paper: 128)")
    d.add_argument("--rpn-train-proposals", type=per_image, default=None,
                   help="proposals per image for training (paper: 2000)")
    d.add_argument("--rpn-test-proposals", type=per_image, default=None,
                   help="proposals per image at test (paper: 300)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable training images with a warning (as for `reslab "
                   "train`); a class left without images is still an error")
    add_max_image_pixels(p)
    p.set_defaults(func=run, reproduce_parser=p)


def run(args: argparse.Namespace) -> int:
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise ReslabError("--models needs at least one network name")
        if args.experiment in ("figure1", "shortcuts"):
            raise ReslabError(f"--models does not apply to {args.experiment}")
    if args.seeds != 1 and args.experiment not in ("table6", "precision"):
        raise ReslabError("--seeds applies to table6 and precision only")
    for flag, is_set, applies in (("--depth", args.depth is not None, ("shortcuts",)),
                                  ("--with-1202", args.with_1202, ("figure6", "table6")),
                                  ("--with-plain110", args.with_plain110, ("figure6",))):
        if is_set and args.experiment not in applies:
            raise ReslabError(f"{flag} applies to {' and '.join(applies)} only")
        if is_set and models and flag != "--depth":
            raise ReslabError(f"{flag} adds a net to the paper's set; with --models, name "
                              "the nets in its list instead")
    imagenet_flags = {"--classes": args.classes, "--images-per-class": args.images_per_class,
                      "--scale": args.scale, "--crop": args.crop,
                      "--test-resize": args.test_resize, "--workers": args.workers,
                      "--iterations": args.iterations, "--milestones": args.milestones,
                      "--lr-policy": args.lr_policy}
    given = [k for k, v in imagenet_flags.items() if v is not None]
    if given and args.experiment not in IMAGENET_EXPERIMENTS:
        raise ReslabError(f"{', '.join(given)} apply to the ImageNet experiments "
                          f"({', '.join(IMAGENET_EXPERIMENTS)})")
    if args.iterations is not None and args.budget is not None:
        raise ReslabError("--iterations and --budget both set the runs' length: give one")
    detection = detection_options(args)
    s = Settings(data=args.data, out=args.out,
                 budget=1.0 if args.budget is None else args.budget, seeds=args.seeds,
                 device=args.device, batch_size=args.batch_size, eval_points=args.eval_points,
                 models=models, with_1202=args.with_1202, with_plain110=args.with_plain110,
                 depth=20 if args.depth is None else args.depth, data_root=args.data_root,
                 progress=args.progress,
                 precision=args.precision, jobs=args.jobs, classes=args.classes,
                 images_per_class=args.images_per_class,
                 scale=tuple(args.scale) if args.scale else None, crop=args.crop,
                 test_resize=args.test_resize, workers=args.workers,
                 run_iterations=args.iterations, lr_policy=args.lr_policy,
                 milestones=tuple(args.milestones) if args.milestones else None,
                 skip_corrupt=args.skip_corrupt, detection=detection)
    outcome = reproduce(args.experiment, s)
    if outcome.status != "finished":
        print(f"reslab reproduce: {outcome.message}: {command_line(args)}", file=sys.stderr)
        return 128 + outcome.signal if outcome.signal else 130
    if outcome.report is not None:  # under torchrun, rank 0 reports
        print(f"done: report in {outcome.report}")
    return 0


def detection_options(args: argparse.Namespace) -> dict:
    """`Settings.detection` from the detection flags (refused for other experiments)."""
    flags = {"weights": args.weights, "min_size": args.min_size, "max_size": args.max_size,
             "train_split": args.train_split, "val_split": args.val_split,
             "trainable_layers": args.trainable_layers, "roi_batch_size": args.roi_batch_size,
             "rpn_train_proposals": args.rpn_train_proposals,
             "rpn_test_proposals": args.rpn_test_proposals}
    given = {k: v for k, v in flags.items() if v is not None}
    if args.experiment not in DETECTION_EXPERIMENTS:
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ReslabError(f"{names} apply to the detection experiments "
                              f"({', '.join(DETECTION_EXPERIMENTS)})")
        return {}
    if args.data == "cifar10":
        raise ReslabError(f"{args.experiment} needs --data: a VOC root (ROOT07,ROOT12 for "
                          "07+12), a COCO root, or synthetic-det[:...]")
    if "weights" in given:
        pairs = [w.strip() for w in given["weights"].split(",") if w.strip()]
        if not pairs or any(w.count("=") != 1 or not all(w.split("=")) for w in pairs):
            raise ReslabError(f"--weights {given['weights']!r}: give NET=FILE pairs, e.g. "
                              "resnet101=r101.pt,vgg16=vgg16.pth")
        given["weights"] = dict(w.split("=") for w in pairs)
    return given


def command_line(args: argparse.Namespace) -> str:
    """The `reslab reproduce ...` command that `args` came from (the flags that differ from
    their defaults), to continue an interrupted sweep."""
    words = ["reslab", "reproduce", args.experiment]
    for action in args.reproduce_parser._actions:
        if not action.option_strings or action.dest in ("help", "reproduce_parser"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        if action.nargs == 0:  # store_true/false/const: the flag itself when it is the value
            if value == action.const:
                words.append(action.option_strings[0])
        elif isinstance(value, (list, tuple)):
            words += [action.option_strings[0], *map(str, value)]
        else:
            words += [action.option_strings[0], str(value)]
    return shlex.join(words)
