"""What the ImageNet experiments share (Sec. 3.4, Tables 2-5, Figure 4): the paper's
numbers, the runs of each table, the testing protocols of a trained run (cached in its
folder), ensembles, and the tables beside the paper's.

Runs train with `TrainConfig.imagenet` at `--budget` of the 60e4-iteration schedule, on the
first `--classes` classes and `--images-per-class` images if asked (then the report says
plainly that its numbers are not the paper's), at `--scale/--crop/--test-resize`. The
multi-scale test sizes follow the crop: the paper's {224, 256, 384, 480, 640} at crop 224,
scaled in proportion for smaller crops.

A run's evaluation is cached in runs/<label>/eval-<protocol>.json under a key of what it
was computed on: the weights (a SHA-256 of last.pt's bytes: a checkpoint rewritten with
the same size and modification time is still another one), the validation images (their
number and a fingerprint of their paths, labels, sizes, modification and change times and
inodes: `cp -p` or `touch -r` set the modification time back, never the change time), the
protocol and the precision; any change recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from reslab.atomic_write import atomic_write_json
from reslab.data.image_root import imagenet_root, source_side
from reslab.data.imagenet import ImageFolderDataset
from reslab.data.scan import vanished_error
from reslab.engine import Engine, make_engine
from reslab.errors import ReslabError
from reslab.experiments.report import DataInfo, Report, md_table
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config
from reslab.inference import LoadedModel, errors_of, imagenet_scores, load_model
from reslab.train.recipes import IMAGENET_RECIPE

#: Table 2 (10-crop top-1 error %, ImageNet val); ResNets with option A.
TABLE2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}
#: Table 3 (10-crop top-1 / top-5 error %, ImageNet val).
TABLE3 = {"plain34": (28.54, 10.02), "resnet34-A": (25.03, 7.76), "resnet34-B": (24.52, 7.46),
          "resnet34-C": (24.19, 7.40), "resnet50": (22.85, 6.71), "resnet101": (21.75, 6.05),
          "resnet152": (21.43, 5.71)}
#: Table 4 (single model, multi-scale, top-1 / top-5 error %, ImageNet val).
TABLE4 = {"resnet34-B": (21.84, 5.71), "resnet34-C": (21.53, 5.60),
          "resnet50": (20.74, 5.25), "resnet101": (19.87, 4.60), "resnet152": (19.38, 4.49)}
#: Table 5: an ensemble of six models, 3.57% top-5 error on the ImageNet *test* set.
TABLE5_TOP5 = 3.57
PAPER_SCALES = (224, 256, 384, 480, 640)

#: (label, model, shortcut) of Table 2 / Figure 4 and of Tables 3-5.
TABLE2_RUNS = (("plain18", "plain18", None), ("plain34", "plain34", None),
               ("resnet18", "resnet18", "A"), ("resnet34", "resnet34", "A"))
TABLE3_RUNS = (("plain34", "plain34", None), ("resnet34-A", "resnet34", "A"),
               ("resnet34-B", "resnet34", "B"), ("resnet34-C", "resnet34", "C"),
               ("resnet50", "resnet50", "B"), ("resnet101", "resnet101", "B"),
               ("resnet152", "resnet152", "B"))


def plan_runs(s: Settings, runs: tuple[tuple[str, str, str | None], ...]) -> list[RunSpec]:
    """The runs of a table, those of `--models` only when it is given (several machines can
    then train different nets into one --out; a last command without it reports)."""
    chosen = [r for r in runs if not s.models or r[0] in s.models or r[1] in s.models]
    return [make_config(s, label, model, shortcut=shortcut) for label, model, shortcut in chosen]


def folder_info(s: Settings) -> DataInfo:
    """Counts of the image folder as the runs see it (with --classes/--images-per-class)."""
    root = imagenet_root(s.data, progress=s.progress)
    train = ImageFolderDataset(os.path.join(root, "train"),
                               skip_corrupt=s.skip_corrupt).restrict(s.classes,
                                                                     s.images_per_class)
    val = ImageFolderDataset(os.path.join(root, "val")).restrict(s.classes)
    return DataInfo(s.data, list(train.classes), len(train), len(val),
                    image_side=source_side([p for p, _ in train.samples]))


def scales_for(crop: int) -> tuple[int, ...]:
    """The paper's multi-scale sizes at crop 224, in proportion for another crop."""
    return tuple(max(1, round(x * crop / 224)) for x in PAPER_SCALES)


def _val(s: Settings, loaded: LoadedModel) -> ImageFolderDataset:
    return ImageFolderDataset(os.path.join(imagenet_root(s.data), "val")).restrict(
        loaded.classes)


def protocol_scores(s: Settings, loaded: LoadedModel, protocol: str,
                    engine: Engine | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities N x K, labels) of the run's val images: "10crop" (Tables 2-3) or
    "multiscale" (Table 4, fully convolutional, scores averaged over the scales)."""
    val = _val(s, loaded)
    engine = engine or make_engine(s.device, "auto")
    workers = s.workers if s.workers is not None else IMAGENET_RECIPE["workers"]
    if protocol == "10crop":
        scores = imagenet_scores(loaded, val, engine, crops=10, workers=workers)
    else:
        scores = imagenet_scores(loaded, val, engine, scales=scales_for(loaded.crop),
                                 images_per_batch=8, workers=workers)
    return scores, torch.tensor(val.targets)


def _errors(protocol: str, scores: torch.Tensor, labels: torch.Tensor) -> dict:
    r = errors_of(scores, labels)
    return {"protocol": protocol, "top1_error": 100 * r.top1_error,
            "top5_error": 100 * r.top5_error, "images": r.images}


def weights_of(o: RunOutcome) -> Path:
    """The run's last.pt, which the report evaluates; ReslabError if it is gone."""
    last = o.out / "last.pt"
    if not last.is_file():
        raise ReslabError(f"{last} is missing: the {o.label} run's weights, which the report "
                          f"evaluates (a cached evaluation beside it cannot be checked): "
                          f"restore it, or delete {o.out} and rerun to train that run again")
    return last


def val_fingerprint(s: Settings) -> dict:
    """The validation images' identity: their number and a SHA-256 of each one's path
    (under val/), label, size, modification and change times and inode. ReslabError naming
    an image that vanished after the scan."""
    root, digest = os.path.join(imagenet_root(s.data), "val"), hashlib.sha256()
    val = ImageFolderDataset(root)
    for path, label in val.samples:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise vanished_error(path, root) from None
        digest.update(f"{os.path.relpath(path, root)}\t{label}\t{st.st_size}\t"
                      f"{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n".encode())
    return {"images": len(val.samples), "sha256": digest.hexdigest()}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(s: Settings, last: Path, protocol: str, engine: Engine) -> dict:
    """What an evaluation of `last` under `protocol` depends on (see the module's doc):
    the weights by their content, never by size and time alone."""
    return {"weights": {"sha256": file_sha256(last)}, "data": val_fingerprint(s),
            "protocol": protocol, "precision": engine.precision}


def _cached(cache: Path, key: dict) -> dict | None:
    try:
        entry = json.loads(cache.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("result"),
                                                                          dict):
        return entry["result"]
    return None


def evaluate_run(s: Settings, o: RunOutcome, protocol: str) -> dict:
    """Top-1/top-5 error (%) of the run's final weights under `protocol`, cached in
    runs/<label>/eval-<protocol>.json (recomputed when what it depends on changed)."""
    last = weights_of(o)
    engine = make_engine(s.device, "auto")
    cache, key = o.out / f"eval-{protocol}.json", cache_key(s, last, protocol, engine)
    result = _cached(cache, key)
    if result is None:
        result = _errors(protocol, *protocol_scores(s, load_model(last), protocol, engine))
        atomic_write_json(cache, {"key": key, "result": result})
    return result


def ensemble(s: Settings, outcomes: list[RunOutcome], protocol: str
             ) -> tuple[dict, dict[str, dict]]:
    """Top-1/top-5 error (%) of the mean of the members' softmax scores (Table 5), and each
    member's own errors from the same scores (one pass over the val images per member;
    cached as `evaluate_run` caches them)."""
    total, labels, members = None, None, {}
    lasts = [weights_of(o) for o in outcomes]  # every member there before any evaluation
    engine = make_engine(s.device, "auto")
    for o, last in zip(outcomes, lasts, strict=True):
        key = cache_key(s, last, protocol, engine)
        scores, labels = protocol_scores(s, load_model(last), protocol, engine)
        members[o.label] = _errors(protocol, scores, labels)
        atomic_write_json(o.out / f"eval-{protocol}.json", {"key": key,
                                                            "result": members[o.label]})
        total = scores if total is None else total + scores
    ens = {**_errors(protocol, total / len(outcomes), labels), "members": list(members)}
    return ens, members


def error_rows(rows: dict[str, dict], paper: dict[str, tuple[float, ...] | float]
               ) -> tuple[str, list[str]]:
    """A markdown table of measured top-1/top-5 beside the paper's, and findings lines."""
    table, findings = [], []
    for label, r in rows.items():
        p = paper.get(label)
        p1, p5 = (p, None) if isinstance(p, float) else (p or (None, None))
        table.append((label, f"{r['top1_error']:.2f}", f"{r['top5_error']:.2f}",
                      "-" if p1 is None else f"{p1:.2f}", "-" if p5 is None else f"{p5:.2f}",
                      "-" if p1 is None else f"{r['top1_error'] - p1:+.2f}"))
        if p1 is not None:
            findings.append(f"{label}: {r['top1_error']:.2f}% top-1 vs the paper's {p1:.2f}% "
                            f"({r['top1_error'] - p1:+.2f} points).")
    header = ["net", "top-1 %", "top-5 %", "paper top-1 %", "paper top-5 %", "distance"]
    return md_table(header, table), findings


def compare(rows: dict[str, dict], a: str, b: str, what: str) -> str | None:
    """A finding on whether `b` beat `a` (top-1), when both were measured."""
    if a not in rows or b not in rows:
        return None
    d = rows[a]["top1_error"] - rows[b]["top1_error"]
    verb = "beat" if d > 0 else "did not beat"
    return (f"{what}: {b} {verb} {a} ({rows[b]['top1_error']:.2f}% vs "
            f"{rows[a]['top1_error']:.2f}% top-1, {d:+.2f} points).")


def ten_crop_report(s: Settings, outcomes: list[RunOutcome], table: str, paper: dict,
                    comparisons: list[tuple[str, str, str]], title: str, intro: str) -> Report:
    """Tables 2 and 3: each run's 10-crop errors beside the paper's, with the comparisons
    (a, b, what) the paper draws between its nets."""
    rows = {o.label: evaluate_run(s, o, "10crop") for o in outcomes}
    md, findings = error_rows(rows, paper)
    findings = [f for f in (compare(rows, a, b, what) for a, b, what in comparisons) if f] \
        + findings
    return Report(title, f"## {table.capitalize()}\n\n{intro}\n\n{md}", findings,
                  results={table: rows}, per_run={k: {"ten_crop": v} for k, v in rows.items()})


def epochs_of(o: RunOutcome) -> list[float]:
    """The x of Figure 4: each record's iteration in epochs of the run's training set."""
    train = (o.info.get("data") or {}).get("train") or 1
    batch = o.info.get("config", {}).get("batch_size") or 1
    return [r["iteration"] * batch / train for r in o.records]

