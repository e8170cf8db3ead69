"""Table 4: single-model error on ImageNet val with fully-convolutional multi-scale testing
(shorter side in {224, 256, 384, 480, 640}, scores averaged), of Table 3's trained nets."""

from __future__ import annotations

from reslab.experiments.imagenet import (
    TABLE3_RUNS,
    TABLE4,
    error_rows,
    evaluate_run,
    plan_runs,
    scales_for,
)
from reslab.experiments.report import Report
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: Table 3's nets tested fully-convolutionally at multiple scales "
               "beside Table 4 (reuses table3's runs in --out)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE3_RUNS)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    rows = {o.label: evaluate_run(s, o, "multiscale") for o in outcomes}
    ten = {o.label: evaluate_run(s, o, "10crop") for o in outcomes}
    table, findings = error_rows(rows, TABLE4)
    better = [k for k in rows if rows[k]["top1_error"] < ten[k]["top1_error"]]
    findings.insert(0, f"Multi-scale testing beat 10-crop testing for {len(better)} of "
                       f"{len(rows)} nets (paper: for every net, e.g. ResNet-152 21.43% -> "
                       "19.38% top-1).")
    crop = outcomes[0].cfg.crop if outcomes else 224
    body = ("## Table 4\n\nTop-1 and top-5 error (%) with fully-convolutional testing, "
            f"softmax scores averaged over shorter sides {list(scales_for(crop))} (the "
            "paper's {224, 256, 384, 480, 640} at crop 224, in proportion to the crop "
            f"{crop} used here).\n\n" + table)
    return Report("Table 4: multi-scale testing on ImageNet", body, findings,
                  results={"table4": rows},
                  per_run={k: {"multi_scale": v, "ten_crop": ten[k]} for k, v in rows.items()})
