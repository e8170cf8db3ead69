"""`reslab detect train|eval|predict`: Faster R-CNN with the paper's backbones (Tables 7-8,
Appendix A)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from reslab.cli.flag_types import (
    count,
    detection_batch,
    int_in,
    long_side,
    per_image,
    short_side,
    worker_count,
)
from reslab.cli.image_limit import add_max_image_pixels
from reslab.detection.config import MAX_SIDE
from reslab.engine import PRECISIONS
from reslab.errors import ReslabError

BACKBONE_HELP = ("resnet18, 34, 50, 101 (the paper's), 152, their plain twins plain18..152, "
                 "or vgg16 (the baseline row of Tables 7-8)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="object detection: train, evaluate and run Faster R-CNN (Tables 7-8)",
        description="Faster R-CNN (torchvision's) with the paper's backbones (Appendix A): "
        "train on a PASCAL VOC or COCO folder, evaluate (COCO mAP by pycocotools, VOC AP), "
        "and detect objects in images.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    _register_train(verbs)
    _register_eval(verbs)
    _register_predict(verbs)


def _register_train(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "train",
        help="train a detector",
        description="Train Faster R-CNN with the paper's recipe (Appendix A; Faster R-CNN's "
        "hyper-parameters): shorter side 600 (longer <= 1000), horizontal flips, SGD momentum "
        "0.9, weight decay 5e-4, lr 0.001 for 60k mini-batches then 0.0001 for 20k, one "
        "image per mini-batch (--recipe coco: 8 images, 240k + 80k iterations); anchors "
        "(128, 256, 512) x (0.5, 1, 2), 256 RPN anchors per image, proposals NMS 0.7, 2000 "
        "for training and 300 at test, 128 RoIs per image with 25% foreground, detections' "
        "NMS 0.3 at test. --head c4 "
        "is the paper's design (RoI pooling before conv5_1, conv5_x as the region head); "
        "--head fpn the feature pyramid of torchvision's fasterrcnn_resnet50_fpn. With "
        "--weights (ImageNet classifier weights) BN is frozen as in Appendix A; without, the "
        "detector trains from scratch with trainable BN. --data: a VOC root "
        "(Annotations/, JPEGImages/, ImageSets/Main/<split>.txt; ROOT1,ROOT2 for 07+12), a "
        "COCO root (annotations/instances_<split>.json + images) or synthetic-det[:...]. "
        "Writes run.json, metrics.jsonl (losses, mAP@.5, mAP@[.5:.95], per-class AP), "
        "TensorBoard events, curves.png, last.pt and best.pt into --out; Ctrl-C or SIGTERM "
        "saves a checkpoint and --resume continues it exactly.",
    )
    p.add_argument("--data", default=None,
                   help="VOC root(s), COCO root or synthetic-det[:key=value,...]")
    p.add_argument("--backbone", default=None, help=f"{BACKBONE_HELP} (default resnet101)")
    p.add_argument("--head", choices=["c4", "fpn"], default=None,
                   help="c4 (the paper's, default) or fpn")
    p.add_argument("--weights", default=None,
                   help="the backbone's ImageNet classifier weights: a reslab checkpoint, a "
                   "registry entry of reslab's ImageNet-recipe classifiers (NAME:MODEL, e.g. "
                   "imagenette:resnet18; `reslab weights` lists them) or a "
                   "torchvision/timm/safetensors file (default: none, from scratch)")
    p.add_argument("--trainable-layers", type=int_in(0, 5), default=None,
                   help="stages trainable from the top, 0..5 (default 3 with --weights, 5 "
                   "without)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], default=None)
    p.add_argument("--torchvision-stride", dest="stride_in_1x1", action="store_const",
                   const=False, default=None,
                   help="bottleneck stride on the 3x3 conv (torchvision/timm --weights)")
    p.add_argument("--recipe", choices=["voc", "coco"], default=None,
                   help="voc (default: 80k iterations of 1 image) or coco (320k of 8)")
    p.add_argument("--train-split", default=None,
                   help="VOC ImageSets/Main name or COCO annotation name (default trainval; "
                   "coco recipe train2014)")
    p.add_argument("--val-split", default=None,
                   help="split evaluated during training (default test; coco recipe val2014)")
    p.add_argument("--skip-bad", action="store_const", const=True, default=None,
                   help="skip (and count) bad annotations, ids and images instead of stopping")
    p.add_argument("--min-size", type=short_side, default=None,
                   help="shorter image side (paper: 600)")
    p.add_argument("--max-size", type=long_side, default=None,
                   help="longer image side at most (paper: 1000)")
    p.add_argument("--no-flip", dest="flip", action="store_const", const=False, default=None,
                   help="no horizontal flips")
    p.add_argument("--anchor-sizes", type=int_in(1, MAX_SIDE[1]), nargs="+", default=None,
                   help="anchor sizes in pixels (default: the head's, scaled by --min-size / "
                   "600; fpn: 5 sizes, one per level)")
    p.add_argument("--iterations", type=count, default=None,
                   help="iterations (paper: 80000 VOC); the lr drop stays at 3/4 of the run")
    p.add_argument("--batch-size", type=detection_batch, default=None,
                   help="images per mini-batch, all processes together (paper: 1 VOC, 8 COCO)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (paper: 0.001)")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--milestones", type=count, nargs="+", default=None,
                   help="iterations where lr is divided by 10 (default: 3/4 of the run)")
    p.add_argument("--rpn-train-proposals", type=per_image, default=None,
                   help="proposals per image after NMS for training (paper: 2000)")
    p.add_argument("--rpn-test-proposals", type=per_image, default=None,
                   help="proposals per image at test (paper: 300)")
    p.add_argument("--rpn-batch-size", type=per_image, default=None,
                   help="anchors sampled per image for the RPN loss (paper: 256)")
    p.add_argument("--roi-batch-size", type=per_image, default=None,
                   help="RoIs sampled per image for the detector loss (paper: 128)")
    p.add_argument("--test-nms", type=float, default=None, metavar="IOU",
                   help="per-class NMS of the detections at test, IoU in (0, 1] (default "
                   "0.3, py-faster-rcnn's; torchvision's is 0.5); eval and predict reuse it")
    p.add_argument("--eval-every", type=count, default=None,
                   help="evaluate and checkpoint every K iterations (default: ~8 per run)")
    p.add_argument("--eval-batch-size", type=detection_batch, default=None)
    p.add_argument("--workers", type=worker_count, default=None,
                   help="DataLoader processes decoding training images (default 0)")
    _add_engine(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None, help="no progress bar")
    p.add_argument("--out", default=None, help="output folder (default runs/detect-NET-HEAD)")
    p.set_defaults(func=run_train)


def _add_test_nms(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-nms", type=float, default=None, metavar="IOU",
                   help="per-class NMS of the detections, IoU in (0, 1] (default: the one "
                   "the detector was trained with; 0.5 for runs before it was recorded)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
    add_max_image_pixels(p)  # every detect verb reads images


def _register_eval(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "eval",
        help="mAP of a trained detector on a split",
        description="Detect every image of --split of --data and score the detections: "
        "mAP@.5 and mAP@[.5:.95] (and per object size) by pycocotools' COCOeval, the VOC "
        "2007 11-point mAP@.5 (Table 7's metric; difficult objects ignored) and the VOC "
        "2010+ all-point mAP@.5, with per-class AP. --predictions writes the detections in "
        "COCO results format with the ground truth as a COCO file (--coco-gt), so anyone "
        "can score them with pycocotools.",
    )
    p.add_argument("--weights", required=True, help="last.pt or best.pt of `reslab detect train`")
    p.add_argument("--data", required=True, help="as for `reslab detect train`")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--json", action="store_true",
                   help="print the metrics as JSON (map50, map, per_class, images, ...)")
    p.add_argument("--predictions", default=None, metavar="PREDS.json",
                   help="write the detections in COCO results format")
    p.add_argument("--coco-gt", default=None, metavar="GT.json",
                   help="with --predictions: where the COCO ground truth goes (default "
                   "PREDS-gt.json beside it)")
    p.add_argument("--min-size", type=short_side, default=None,
                   help="test scale (default: the training one)")
    p.add_argument("--max-size", type=long_side, default=None)
    _add_test_nms(p)
    p.add_argument("--batch-size", type=detection_batch, default=2, help="images per batch")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad annotations and images (they then do not count)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _add_engine(p)
    p.set_defaults(func=run_eval)


def _register_predict(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "predict",
        help="boxes, classes and scores of objects in images",
        description="Detect objects in images with a trained detector: one line per box "
        "(class, score, [x1, y1, x2, y2] in pixels). --draw writes each image with its "
        "boxes drawn into a folder (PNG).",
    )
    p.add_argument("--weights", required=True, help="last.pt or best.pt of `reslab detect train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--draw", default=None, metavar="OUT_DIR",
                   help="write the images with their boxes into OUT_DIR")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="show boxes scoring at least this (default 0.5)")
    p.add_argument("--json", action="store_true", help="print the detections as JSON")
    p.add_argument("--min-size", type=short_side, default=None)
    p.add_argument("--max-size", type=long_side, default=None)
    _add_test_nms(p)
    _add_engine(p)
    p.set_defaults(func=run_predict)


# ----------------------------------------------------------------------------- train


def config_from_args(args: argparse.Namespace):
    """The DetectConfig the flags describe (over the recipe's values, or with --resume
    over the resumed run's)."""
    from reslab.detection.config import DetectConfig

    names = {f.name for f in dataclasses.fields(DetectConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.resume:
        given.pop("resume", None)
        out = given.pop("out", None)
        if out is None:
            raise ReslabError("--resume needs the run's --out")
        return DetectConfig.for_resume(out, **given)
    if "data" not in given:
        raise ReslabError("--data is required: a VOC root, a COCO root or synthetic-det")
    return DetectConfig(**given)


def run_train(args: argparse.Namespace) -> int:
    from reslab.detection.trainer import train_detector
    from reslab.train.distributed import shutdown_process_group

    cfg = config_from_args(args)
    try:
        result = train_detector(cfg)
    finally:
        shutdown_process_group()
    stopped = 128 + (result.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    if os.environ.get("RANK", "0") != "0":
        return stopped if result.status == "interrupted" else 0
    if result.status == "interrupted":
        print(f"stopped at iteration {result.iteration}/{result.iterations}; checkpoint saved "
              f"to {result.out / 'last.pt'}. Continue with `reslab detect train --resume "
              f"--out {result.out}`.")
        return stopped
    last = result.last or {}
    if last:
        print(f"done: {result.iteration} iterations in {result.wall_seconds:.0f} s; "
              f"{last.get('eval_split', 'test')} mAP@.5 {_pct(last['map50'])} "
              f"mAP@[.5:.95] {_pct(last['map'])} (best mAP@.5 "
              f"{_pct(result.best_map50)}); outputs in {result.out}")
    return 0


# ----------------------------------------------------------------------------- eval


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def check_test_flags(args: argparse.Namespace) -> None:
    """One line for test-time flags no run can use (training's are DetectConfig's)."""
    for flag, value, low, high in (("--min-size", args.min_size, 32, 4096),
                                   ("--max-size", args.max_size, 32, 8192),
                                   ("--batch-size", getattr(args, "batch_size", 1), 1, 1024)):
        if value is not None and not low <= value <= high:
            raise ReslabError(f"{flag} must be in {low}..{high}, got {value}")
    nms = getattr(args, "test_nms", None)
    if nms is not None and not 0 < nms <= 1:
        raise ReslabError(f"--test-nms must be in (0, 1], got {nms}")


def run_eval(args: argparse.Namespace) -> int:
    from reslab.atomic_write import atomic_write_json
    from reslab.detection import coco_ground_truth, coco_results, evaluate_detections
    from reslab.detection.evaluate import scored_images
    from reslab.detection.inference import (
        detect_dataset,
        load_detector,
        set_test_nms,
        set_test_size,
    )
    from reslab.detection.open_data import open_detection_data
    from reslab.engine import make_engine

    check_test_flags(args)
    gt_path = outputs = None
    if args.predictions:
        preds = Path(args.predictions)
        gt_path = Path(args.coco_gt) if args.coco_gt else preds.with_name(preds.stem + "-gt.json")
        outputs = ((preds, "--predictions"), (gt_path, "--coco-gt"))
        for path, flag in outputs:
            if path.is_dir():
                raise ReslabError(f"{flag} {path} is a folder: name the JSON file to write")
            if path.exists() and not path.is_file():
                raise ReslabError(f"{flag} {path} is not a regular file (a device, FIFO or "
                                  "socket): give a new file or a regular one")
        if same_file(preds, gt_path):
            raise ReslabError(f"--predictions and --coco-gt both name {preds}: the detections "
                              "and their ground truth need two files")
        refuse_inputs(outputs, [Path(args.weights)], "the --weights checkpoint")
    elif args.coco_gt:
        raise ReslabError("--coco-gt goes with --predictions")
    loaded = load_detector(args.weights)
    data = open_detection_data(args.data, args.split, skip_bad=args.skip_bad)
    if outputs:
        refuse_inputs(outputs, data.sources, "an annotation file of --data")
        refuse_inputs(outputs, [r.path for r in data.records if r.path is not None],
                      "an image of --data")
    check_classes(loaded.classes, data.classes, data.name)
    engine = make_engine(args.device or "auto", args.precision or "auto", channels_last=False)
    model = engine.prepare(loaded.model)
    set_test_size(model, args.min_size, args.max_size)
    nms = set_test_nms(model, args.test_nms)
    detections = detect_dataset(model, data, engine, args.batch_size,
                                progress=args.progress and not args.json)
    scored, detections = scored_images(data, detections)  # skip_bad: unreadable ones left out
    metrics = {**evaluate_detections(scored, detections),
               "skipped_images": len(data) - len(scored)}
    if args.predictions:
        results = coco_results(scored, detections)
        atomic_write_json(gt_path, coco_ground_truth(scored))
        atomic_write_json(Path(args.predictions), results)
    if args.json:
        print(json.dumps({**metrics, "weights": str(args.weights), "split": args.split,
                          "detector": loaded.name, "test_nms": nms}))
    else:
        print(f"{loaded.name} on {data.name}: {metrics['images']} images (NMS {nms:g})")
        print(f"mAP@.5 {_pct(metrics['map50'])}  mAP@[.5:.95] {_pct(metrics['map'])}  "
              f"(VOC07 11-point mAP@.5 {_pct(metrics.get('voc07_map50'))}, all-point "
              f"{_pct(metrics.get('voc_map50'))})")
        print(f"{'class':24s} {'AP@.5':>8s} {'AP@[.5:.95]':>12s} {'VOC07 AP':>9s}")
        for name, ap in metrics["per_class"].items():
            print(f"{name:24s} {_pct(ap.get('ap50')):>8s} {_pct(ap.get('ap')):>12s} "
                  f"{_pct(ap.get('voc07_ap50')):>9s}")
    if args.predictions:
        print(f"wrote {args.predictions} ({len(results)} detections, COCO results format) and "
              f"{gt_path} (its ground truth): score with pycocotools' COCOeval",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and hard links too; a missing path is the
    same as another only when both resolve alike)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_inputs(outputs, inputs, what: str) -> None:
    """ReslabError if an output path (path, flag) is one of the `inputs` (files read):
    writing it would destroy what is being read. Only an existing output can be one; the
    inputs compared are those of its (real) name, or all of them for a hard-linked file."""
    for out, flag in outputs:
        try:
            st = os.stat(out)
        except OSError:
            continue
        names = {out.name, Path(os.path.realpath(out)).name}
        for path in inputs:
            if (st.st_nlink > 1 or path.name in names) and same_file(out, path):
                raise ReslabError(f"{flag} {out} is {what} ({path}): refusing to replace it; "
                                  "give another path (nothing was written)")


def check_classes(trained: list[str], data: list[str], name: str) -> None:
    """ReslabError if the data has another number of classes than the detector; a
    warning if the names differ (labels would then mean other things)."""
    if len(trained) != len(data):
        raise ReslabError(f"the detector was trained on {len(trained)} classes, {name} has "
                          f"{len(data)}: evaluate it on data with its classes")
    if list(trained) != list(data):
        differ = [f"{a!r}/{b!r}" for a, b in zip(trained, data, strict=True) if a != b]
        warnings.warn(f"the class names of {name} differ from the detector's "
                      f"({', '.join(differ[:3])}): boxes are scored by label index",
                      stacklevel=2)


# ----------------------------------------------------------------------------- predict


def run_predict(args: argparse.Namespace) -> int:
    from reslab.detection.data import read_image
    from reslab.detection.inference import detect, load_detector, set_test_nms, set_test_size
    from reslab.engine import make_engine

    check_test_flags(args)
    if not 0 <= args.score_threshold <= 1:
        raise ReslabError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.draw and Path(args.draw).exists() and not Path(args.draw).is_dir():
        raise ReslabError(f"--draw {args.draw} is a file: give a folder for the drawn images")
    loaded = load_detector(args.weights)
    engine = make_engine(args.device or "auto", args.precision or "auto", channels_last=False)
    model = engine.prepare(loaded.model)
    set_test_size(model, args.min_size, args.max_size)
    set_test_nms(model, args.test_nms)
    everything, used = [], set()
    inputs = [Path(p) for p in args.images]
    for path in args.images:
        image = read_image(Path(path), hint=None)
        found = detect(model, [image], engine)[0]
        keep = found["scores"] >= args.score_threshold
        boxes, scores = found["boxes"][keep], found["scores"][keep]
        names = [loaded.classes[int(k) - 1] for k in found["labels"][keep]]
        rows = [{"class": n, "score": round(float(s), 4),
                 "box": [round(float(v), 1) for v in b]}
                for n, s, b in zip(names, scores, boxes, strict=True)]
        everything.append({"image": path, "detections": rows})
        if not args.json:
            print(f"{path}: {len(rows)} objects")
            for r in rows:
                print(f"  {r['class']:20s} {100 * r['score']:6.2f}%  {r['box']}")
        if args.draw:
            out = _draw(image, boxes, [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist(),
                                                                        strict=True)],
                        Path(args.draw), Path(path), used, inputs)
            if not args.json:
                print(f"  drawn: {out}")
    if args.json:
        print(json.dumps(everything))
    return 0


def _draw(image, boxes, labels: list[str], folder: Path, source: Path, used: set,
          inputs: list[Path]) -> Path:
    """Write `image` with its boxes as FOLDER/<name>.png (atomically); names kept unique,
    and never an input image's (`<name>-boxes.png` then)."""
    from torchvision.io import encode_png
    from torchvision.utils import draw_bounding_boxes

    from reslab.atomic_write import atomic_write_bytes

    def taken(stem: str) -> bool:  # used, an input, or a device/FIFO never to be replaced
        out = folder / f"{stem}.png"
        return (stem in used or any(same_file(out, p) for p in inputs)
                or (out.exists() and not out.is_file()))

    base = source.stem if not taken(source.stem) or source.stem in used else f"{source.stem}-boxes"
    stem, k = base, 1
    while taken(stem):
        k += 1
        stem = f"{base}-{k}"
    used.add(stem)
    drawn = draw_bounding_boxes(image, boxes, labels=labels, colors="red", width=2)
    out = folder / f"{stem}.png"
    atomic_write_bytes(out, encode_png(drawn).numpy().tobytes())
    return out
