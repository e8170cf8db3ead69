"""What the detection experiments share (Tables 7-8, Appendix A): the runs of a table (one
Faster R-CNN per backbone, the c4 design, `DetectConfig`'s VOC or COCO recipe at
`--budget` of its schedule), the data's counts, and the outputs (results.json, report.md
with the measured mAP beside the paper's).

The runs go through the sweep like every other experiment's (finished runs reused,
unfinished ones resumed, `--jobs`); each run's final evaluation on the test split is the
number reported. `Settings.detection` carries the detection flags of `reslab reproduce`
(image sizes, splits, RoI/proposal counts, trainable stages, and `weights`: backbone
name -> ImageNet classifier weights; a backbone without weights trains from scratch,
which the report says).

A run folder made earlier keeps the test-time NMS it was made with (`recorded_test_nms`:
0.5, torchvision's, for folders from before the paper's 0.3 was the default), so that it
is reused or resumed, not refused; the report says each run's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from reslab.atomic_write import atomic_write_json, atomic_write_text
from reslab.detection.config import COCO_RECIPE, PAPER_MILESTONES, VOC_RECIPE, DetectConfig
from reslab.detection.models import BACKBONES, LEGACY_TEST_NMS
from reslab.errors import ReslabError
from reslab.experiments.report import DataInfo, Report, environment, md_table
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, _read_run_json
from reslab.train.checkpoint import Checkpoint

#: The most evaluations of a detection run (each detects the whole test split; the
#: report uses the last).
MAX_EVALUATIONS = 8
DEFAULT_MODELS = ("vgg16", "resnet101")


def recipe_defaults(recipe: str) -> dict:
    return VOC_RECIPE if recipe == "voc" else COCO_RECIPE


def iterations(s: Settings, recipe: str) -> int:
    """The recipe's schedule (80k VOC, 320k COCO iterations) scaled by --budget."""
    return max(1, round(recipe_defaults(recipe)["iterations"] * s.budget))


def splits(s: Settings, recipe: str) -> tuple[str, str]:
    d = {**recipe_defaults(recipe), **s.detection}
    return d["train_split"], d["val_split"]


def recorded_test_nms(out: Path) -> float | None:
    """The test-time NMS (IoU) of the detection run already in `out` (its run.json, else
    its last.pt): what it recorded, 0.5 (torchvision's, as they ran) for records without
    it; None for a folder without a detector's run, or one the sweep refuses anyway."""
    try:
        info = _read_run_json(out)
        config = info.get("config") if info else None
        if config is None and (out / "last.pt").is_file():
            config = Checkpoint.load(out / "last.pt").config
    except (OSError, ReslabError):
        return None  # the sweep or the trainer says what is wrong with it
    if not isinstance(config, dict) or "head" not in config:
        return None
    nms = config.get("test_nms", LEGACY_TEST_NMS)
    return float(nms) if isinstance(nms, (int, float)) and not isinstance(nms, bool) else None


def plan_runs(s: Settings, recipe: str) -> list[RunSpec]:
    """One run per backbone (--models, default VGG-16 and ResNet-101), c4 design; a run
    folder that exists keeps the test-time NMS it was made with (`recorded_test_nms`)."""
    its = iterations(s, recipe)
    options = {k: v for k, v in s.detection.items() if k != "weights"}
    weights = s.detection.get("weights") or {}
    runs = []
    for model in s.models or DEFAULT_MODELS:
        if model not in BACKBONES:
            raise ReslabError(f"--models: {model} is not a detection backbone (one of "
                              f"{', '.join(BACKBONES)})")
        out = s.out / "runs" / model
        recorded = None if "test_nms" in options else recorded_test_nms(out)
        kept = {} if recorded is None else {"test_nms": recorded}
        cfg = DetectConfig(
            recipe=recipe, backbone=model, head="c4", data=s.data, iterations=its,
            batch_size=s.batch_size, weights=weights.get(model), out=str(out),
            eval_every=max(1, its // min(s.eval_points, MAX_EVALUATIONS)), device=s.device,
            precision=s.precision, progress=s.progress, skip_bad=s.skip_corrupt, **options,
            **kept)
        runs.append(RunSpec(model, cfg))
    unknown = set(weights) - {spec.label for spec in runs}
    if unknown:
        raise ReslabError(f"--weights names {', '.join(sorted(unknown))}, which is not among "
                          f"the runs ({', '.join(spec.label for spec in runs)})")
    return runs


def data_info(s: Settings, recipe: str) -> DataInfo:
    """The counts of the training and test splits (read once here, to fail early)."""
    from reslab.detection.open_data import open_detection_data

    train_split, val_split = splits(s, recipe)
    skip = s.skip_corrupt
    train = open_detection_data(s.data, train_split, skip_bad=skip)
    test = open_detection_data(s.data, val_split, skip_bad=skip)
    return DataInfo(train.name, list(train.classes), len(train), len(test))


def final(o: RunOutcome, key: str) -> float | None:
    return o.records[-1].get(key) if o.records else None


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def init_notes(outcomes: Sequence[RunOutcome]) -> list[str]:
    """One line per run on how its backbone started (ImageNet weights or from scratch)."""
    return [f"{o.label}: {o.info.get('init', '?')}" for o in outcomes]


def comparison(outcomes: Sequence[RunOutcome], key: str, what: str,
               paper: dict[str, float]) -> str | None:
    """The second net against the first (ResNet-101 vs VGG-16 by default), with the paper's
    difference when both are the paper's rows."""
    if len(outcomes) < 2:
        return None
    a, b = outcomes[0], outcomes[1]
    va, vb = final(a, key), final(b, key)
    if va is None or vb is None:
        return None
    line = (f"{b.label} vs {a.label}: {what} {pct(va)}% -> {pct(vb)}% "
            f"({100 * (vb - va):+.1f} points)")
    if a.label in paper and b.label in paper:
        line += (f"; the paper: {paper[a.label]} -> {paper[b.label]} "
                 f"({paper[b.label] - paper[a.label]:+.1f})")
    return line + "."


def write_outputs(experiment: str, s: Settings, outcomes: Sequence[RunOutcome], data: DataInfo,
                  report: Report, started: float) -> Path:
    """DIR/results.json (+ results-<experiment>.json) and DIR/report.md (+
    report-<experiment>.md) of a detection experiment; returns the report's path."""
    wall = time.time() - started
    env = environment(outcomes)
    runs = []
    for o in outcomes:
        last = o.records[-1] if o.records else {}
        runs.append({"label": o.label, "backbone": o.cfg.backbone, "head": o.cfg.head,
                     "weights": o.cfg.weights, "init": o.info.get("init"),
                     "iterations": o.info.get("finished_iteration", o.cfg.iterations),
                     "test_nms": o.cfg.test_nms,
                     **{k: last.get(k) for k in ("map50", "map", "voc07_map50", "voc_map50")},
                     "per_class": last.get("per_class"),
                     "wall_seconds": o.info.get("wall_seconds"), "reused": o.skipped,
                     "folder": str(Path("runs") / o.label), **report.per_run.get(o.label, {})})
    recipe = outcomes[0].cfg.recipe if outcomes else "voc"
    its = iterations(s, recipe)
    train_wall = sum(r["wall_seconds"] or 0 for r in runs)
    results = {
        "experiment": experiment, "budget": s.budget, "iterations": its,
        "batch_size": outcomes[0].cfg.batch_size if outcomes else None, "recipe": recipe,
        "data": {"spec": s.data, "name": data.name, "train": data.train, "test": data.test,
                 "classes": len(data.classes), "splits": list(splits(s, recipe))},
        "machine": env["machine"], "versions": env["versions"], "wall_seconds": wall,
        "train_wall_seconds": train_wall, "map_in": "fraction", "runs": runs, **report.results,
    }
    atomic_write_json(s.out / "results.json", results)
    atomic_write_json(s.out / f"results-{experiment}.json", results)
    reused = sum(o.skipped for o in outcomes)
    full = recipe_defaults(recipe)["iterations"]
    cfg0 = outcomes[0].cfg if outcomes else DetectConfig(recipe=recipe)
    lines = [
        f"# {report.title}", "",
        "Reproduction of He et al. 2015, *Deep Residual Learning for Image Recognition*, "
        "Appendix A, with `reslab reproduce`: Faster R-CNN (torchvision's) with the c4 "
        "design (RoI pooling before conv5_1; VGG-16: its fc6/fc7).", "",
        "## Setup", "",
        f"- data: `{s.data}` ({data.name}: {data.train} training, {data.test} test images, "
        f"{len(data.classes)} classes; splits {' / '.join(splits(s, recipe))})",
        f"- budget: {s.budget:g} x the paper's {full} iterations = {its} iterations per run, "
        f"{cfg0.batch_size} images per mini-batch, lr {cfg0.lr} divided by 10 at "
        f"{list(cfg0.milestones_for(its))} (paper: {list(PAPER_MILESTONES[recipe])} of {full})",
        f"- images: shorter side {cfg0.min_size}, longer at most {cfg0.max_size} (paper: 600 "
        "and 1000)",
        f"- detections' per-class NMS at test: IoU {nms_of(outcomes, cfg0)} (Faster R-CNN's "
        "0.3; runs made before it was the default keep torchvision's 0.5)",
        *[f"- {note}" for note in init_notes(outcomes)],
        f"- precision: {', '.join(sorted({o.info.get('precision', '?') for o in outcomes}))}",
        f"- machine: {env['device']} ({env['machine'].get('device', '?')}), "
        f"{env['machine'].get('platform', '')}",
        f"- torch {env['versions'].get('torch', '?')}, torchvision "
        f"{env['versions'].get('torchvision', '?')}, reslab {env['versions'].get('reslab', '?')}",
        f"- wall time: {wall:.0f} s for this command; {train_wall:.0f} s of training recorded "
        f"in the runs ({reused} of {len(outcomes)} runs reused from earlier)", "",
        report.body.rstrip(), "", "## What this run shows", "",
        *([f"- {f}" for f in report.findings] or ["- (no comparison possible)"]),
    ]
    if s.budget < 1 or cfg0.min_size != 600 or any(o.cfg.weights is None for o in outcomes):
        lines += ["", "**Not comparable with the paper's numbers:** the paper fine-tunes "
                  "ImageNet-trained backbones for the full schedule at 600 pixels; runs from "
                  "scratch, shorter or on smaller images show that the pipeline works and how "
                  "the backbones compare with each other trained the same way."]
    lines += ["", "Files: `results.json` (all numbers, per-class AP), `runs/<label>/` "
              "(run.json, metrics.jsonl, curves.png, last.pt, best.pt, TensorBoard events); "
              "`reslab detect eval --weights runs/<label>/last.pt` re-scores a run.", ""]
    text = "\n".join(lines)
    atomic_write_text(s.out / f"report-{experiment}.md", text)
    path = s.out / "report.md"
    atomic_write_text(path, text)
    return path


def nms_of(outcomes: Sequence[RunOutcome], cfg0: DetectConfig) -> str:
    """The runs' test-time NMS: one value when they share it, else each run's."""
    values = {o.cfg.test_nms for o in outcomes} or {cfg0.test_nms}
    if len(values) == 1:
        return f"{values.pop():g}"
    return ", ".join(f"{o.cfg.test_nms:g} ({o.label})" for o in outcomes)


def table_rows(outcomes: Sequence[RunOutcome], columns: Sequence[tuple[str, str]],
               paper: dict[str, tuple[float, ...]], paper_titles: Sequence[str]) -> str:
    """A markdown table: net, each measured column (%), then the paper's values (%)."""
    headers = ["net"] + [f"{title} %" for _, title in columns] + [
        f"paper {title} %" for title in paper_titles]
    rows = []
    for o in outcomes:
        theirs = paper.get(o.label)
        rows.append([o.label] + [pct(final(o, key)) for key, _ in columns] + (
            [f"{v}" for v in theirs] if theirs else ["-"] * len(paper_titles)))
    return md_table(headers, rows)
