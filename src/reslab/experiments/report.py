"""What every experiment writes into DIR: results.json and report.md (figures embedded
by relative path, the setup stated, the measured numbers next to the paper's)."""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reslab.analysis.complexity import count_parameters
from reslab.atomic_write import atomic_write_bytes, atomic_write_json, atomic_write_text
from reslab.experiments.sweep import RunOutcome, Settings
from reslab.models.registry import create_model, resolve


@dataclass
class Report:
    """An experiment's contribution to the outputs: a title, markdown sections, the
    plain-language findings, figure file names and extra results.json fields."""

    title: str
    body: str
    findings: list[str]
    figures: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    per_run: dict[str, dict] = field(default_factory=dict)  # label -> extra fields


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage, or 'n/a'."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def final(o: RunOutcome, key: str) -> float | None:
    """The last record's value of `key` (a fraction), or None."""
    return o.records[-1].get(key) if o.records else None


def best_test(o: RunOutcome) -> float | None:
    errs = [r["test_error"] for r in o.records if r.get("test_error") is not None]
    return min(errs) if errs else None


def count_params(model: str, shortcut: str | None, num_classes: int) -> int:
    return count_parameters(create_model(model, num_classes, shortcut))


def run_summary(o: RunOutcome, num_classes: int) -> dict:
    """The per-run fields of results.json (errors in %)."""
    ft, fe, be = final(o, "train_error"), final(o, "test_error"), best_test(o)
    spec = o.info.get("model_spec", {})
    return {
        "label": o.label, "model": o.cfg.model, "shortcut": spec.get("shortcut"),
        "seed": o.cfg.seed, "params": count_params(o.cfg.model, o.cfg.shortcut, num_classes),
        "final_train_error": None if ft is None else 100 * ft,
        "final_test_error": None if fe is None else 100 * fe,
        "best_test_error": None if be is None else 100 * be,
        "iterations": o.info.get("finished_iteration", o.cfg.iterations),
        "wall_seconds": o.info.get("wall_seconds"),
        "reused": o.skipped, "folder": str(Path("runs") / o.label),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def environment(outcomes: Sequence[RunOutcome]) -> dict:
    """Machine and versions, from the runs' run.json (the first run that has them)."""
    for o in outcomes:
        if o.info.get("machine"):
            m = o.info["machine"]
            return {"machine": m, "versions": o.info.get("versions", {}),
                    "device": m.get("gpu") or m.get("cpu") or m.get("device", "unknown")}
    import torch

    return {"machine": {}, "versions": {"torch": torch.__version__}, "device": "unknown"}


@dataclass
class DataInfo:
    """What the report says of the data: a loaded CIFAR set's or an image folder's counts."""

    name: str
    classes: list[str]
    train: int
    test: int
    image_side: int | None = None  # an image folder's median shorter side (pixels)

    @classmethod
    def of(cls, data) -> DataInfo:
        """From an `ImageData` (CIFAR recipe) or a `DataInfo` already."""
        if isinstance(data, DataInfo):
            return data
        return cls(data.name, list(data.classes), len(data.train), len(data.test))


#: ImageNet-1k's class count: a folder with another is a miniature (e.g. Imagenette).
IMAGENET_CLASSES = 1000


def miniature(data: DataInfo, spec: str) -> str | None:
    """What an ImageNet-recipe folder is when it is not ImageNet-1k (another class count),
    e.g. "imagenette-128, a 10-class 128-pixel miniature of ImageNet"; None for ImageNet."""
    k = len(data.classes)
    if k == IMAGENET_CLASSES:
        return None
    name = os.path.basename(os.path.normpath(spec))
    for ext in (".tar.gz", ".tgz", ".tar"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    side = f" {data.image_side}-pixel" if data.image_side else ""
    return f"{name}, a {k}-class{side} miniature of ImageNet"


def imagenet_where(s: Settings, data) -> str:
    """"ImageNet", or the miniature it is (`miniature`): the reports' titles say it."""
    return miniature(DataInfo.of(data), s.data) or "ImageNet"


def write_outputs(experiment: str, s: Settings, outcomes: Sequence[RunOutcome], data,
                  report: Report, started: float) -> Path:
    """Write DIR/results.json and DIR/report.md; returns the report's path."""
    wall = time.time() - started
    env = environment(outcomes)
    data = DataInfo.of(data)
    runs = []
    for o in outcomes:
        row = run_summary(o, len(data.classes))
        row.update(report.per_run.get(o.label, {}))
        runs.append(row)
    train_wall = sum(r["wall_seconds"] or 0 for r in runs)
    results = {
        "experiment": experiment, "budget": s.fraction, "iterations": s.iterations,
        "seeds": s.seeds, "batch_size": s.batch, "recipe": s.recipe,
        "data": {"spec": s.data, "name": data.name, "train": data.train,
                 "test": data.test, "classes": len(data.classes),
                 "classes_limit": s.classes, "images_per_class": s.images_per_class,
                 "image_side": data.image_side,
                 "miniature": miniature(data, s.data) if s.recipe == "imagenet" else None},
        "machine": env["machine"], "versions": env["versions"],
        "wall_seconds": wall, "train_wall_seconds": train_wall, "errors_in": "percent",
        "runs": runs, **report.results,
    }
    atomic_write_json(s.out / "results.json", results)
    atomic_write_json(s.out / f"results-{experiment}.json", results)
    reused = sum(o.skipped for o in outcomes)
    lines = [
        f"# {report.title}", "",
        "Reproduction of He et al. 2015, *Deep Residual Learning for Image Recognition*, "
        "with `reslab reproduce`.", "",
        "## Setup", "",
        f"- data: `{s.data}` ({data.name}: {data.train} training, {data.test} "
        f"test images, {len(data.classes)} classes)",
        *([_input_line(outcomes)] if s.recipe == "imagenet" and outcomes else []),
        _budget_line(s),
        f"- seeds: {s.seeds}",
        f"- precision: {', '.join(sorted({o.info.get('precision', '?') for o in outcomes}))}"
        " (autocast dtype of training)",
        f"- machine: {env['device']} ({env['machine'].get('device', '?')}), "
        f"{env['machine'].get('platform', '')}",
        f"- torch {env['versions'].get('torch', '?')}, reslab "
        f"{env['versions'].get('reslab', '?')}",
        f"- wall time: {wall:.0f} s for this command; {train_wall:.0f} s of training "
        f"recorded in the runs ({reused} of {len(outcomes)} runs reused from earlier)",
        "",
    ]
    for fig in report.figures:
        lines += [f"![{fig}]({fig})", ""]
    lines += [report.body.rstrip(), "", "## What this run shows", ""]
    lines += [f"- {f}" for f in report.findings] or ["- (no comparison possible)"]
    fraction = s.fraction
    if fraction < 1:
        lines += ["", f"The runs are {fraction:.3g} of the paper's length, so absolute errors "
                  "are not comparable with the paper's; the comparisons above are between "
                  "nets trained the same way."]
    small = miniature(data, s.data) if s.recipe == "imagenet" else None
    if small and not (s.classes or s.images_per_class):
        lines += ["", f"**Not comparable with the paper's numbers:** trained and tested on "
                  f"{small} ({data.train} training, {data.test} validation images; the "
                  "paper: 1000 classes, 1.28M training images of ImageNet at full size, 224 "
                  "crops); the paper's numbers are shown for orientation only, the "
                  "comparisons are between nets trained the same way on the same photos."]
    if s.classes or s.images_per_class:
        lines += ["", "**Not comparable with the paper's numbers:** trained on "
                  + (f"the first {s.classes} classes" if s.classes else "all classes")
                  + (f", at most {s.images_per_class} images per class"
                     if s.images_per_class else "")
                  + " (the paper: all 1000 classes, 1.28M images); the table shows that the "
                  "pipeline runs and how the nets compare with each other at this size."]
    lines += ["", "Files: `results.json` (all numbers), `runs/<label>/` (run.json, "
              "metrics.jsonl, curves.png, last.pt, best.pt, TensorBoard events).", ""]
    others = sorted(p.name for p in s.out.glob("report-*.md")
                    if p.name != f"report-{experiment}.md")
    if others:
        lines += ["Other experiments in this folder: "
                  + ", ".join(f"[{n}]({n})" for n in others) + ".", ""]
    text = "\n".join(lines)
    # report.md is the latest experiment's; report-<experiment>.md stays when another
    # experiment (e.g. figure7 after figure6) shares the folder and its runs.
    atomic_write_text(s.out / f"report-{experiment}.md", text)
    path = s.out / "report.md"
    atomic_write_text(path, text)
    return path


def _input_line(outcomes: Sequence[RunOutcome]) -> str:
    """The ImageNet runs' input sizes beside the paper's (Sec. 3.4)."""
    c = outcomes[0].cfg
    return (f"- input: shorter side in [{c.scale[0]}, {c.scale[1]}], {c.crop}x{c.crop} crops "
            f"+ flips, PCA lighting {c.lighting:g}, per-pixel mean; tested at shorter side "
            f"{c.test_resize} (paper: [256, 480], 224, 256)")


def _budget_line(s: Settings) -> str:
    if s.recipe == "imagenet":
        length = (f"{s.iterations} iterations per run (--iterations)" if s.run_iterations
                  else f"{s.budget:g} x the paper's 60e4 iterations = {s.iterations} "
                  "iterations per run")
        policy = (f"lr divided by 10 at iterations {', '.join(map(str, s.milestones))}"
                  if s.milestones else "lr divided by 10 at 50% and 75% of the run"
                  if s.policy == "step" else "lr divided by 10 when the validation error "
                  "plateaus")
        return (f"- length: {length}, batch {s.batch}; {policy} (Sec. 3.4; paper: up to "
                "60e4 iterations, batch 256, lr /10 on plateaus)")
    return (f"- budget: {s.budget:g} x the paper's 64k iterations = {s.iterations} iterations "
            f"per run, batch {s.batch}; learning-rate milestones scaled in proportion "
            "(paper: 64000 iterations, batch 128)")


def depth_of(o: RunOutcome) -> int:
    return resolve(o.cfg.model).depth


def depth_trend(outs: Sequence[RunOutcome], key: str, what: str, expect: str) -> str:
    """One sentence: does the final `key` error go `expect` ("higher"/"lower") with depth
    across `outs` (sorted by depth)?"""
    vals = [(o.label, final(o, key)) for o in outs]
    seq = ", ".join(f"{label} {pct(v)}%" for label, v in vals)
    pairs = [(a, b) for (_, a), (_, b) in zip(vals, vals[1:], strict=False)
             if a is not None and b is not None]
    ok = sum(1 for a, b in pairs if (b > a if expect == "higher" else b < a))
    if not pairs:
        return f"{what}: {seq}"
    if ok == len(pairs):
        verdict = f"each deeper net ended with {expect} {what}"
    elif ok == 0:
        verdict = f"no deeper net ended with {expect} {what}"
    else:
        verdict = f"{ok} of {len(pairs)} steps in depth ended with {expect} {what}"
    return f"{verdict} ({seq})"


def degradation(shallow: RunOutcome, deep: RunOutcome) -> list[str]:
    """Figure 1's claim, checked on the final training and test errors."""
    out = []
    for key, what in (("train_error", "training"), ("test_error", "test")):
        a, b = final(shallow, key), final(deep, key)
        if a is None or b is None:
            continue
        shows = b > a
        out.append(f"{deep.label} ended with {'higher' if shows else 'lower or equal'} "
                   f"{what} error than {shallow.label} ({pct(b)}% vs {pct(a)}%): the "
                   f"degradation problem {'shows' if shows else 'does not show'} in "
                   f"{what} error at this budget.")
    return out


def curve_table(outcomes: Sequence[RunOutcome]) -> str:
    """Final training/test error and best test error (%) of each run."""
    rows = [(o.label, pct(final(o, "train_error")), pct(final(o, "test_error")),
             pct(best_test(o))) for o in outcomes]
    return md_table(["net", "final train error %", "final test error %",
                     "best test error %"], rows)
