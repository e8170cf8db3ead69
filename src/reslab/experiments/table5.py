"""Table 5: an ensemble of the trained nets (the mean of their softmax scores) beside its
members; the paper's ensemble of six models reached 3.57% top-5 error on the test set."""

from __future__ import annotations

from reslab.experiments.imagenet import TABLE3_RUNS, TABLE5_TOP5, ensemble, plan_runs
from reslab.experiments.report import Report, md_table
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: an ensemble of Table 3's nets (mean of softmax scores, multi-scale "
               "testing) beside its members and Table 5 (reuses table3's runs)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE3_RUNS)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    ens, members = ensemble(s, outcomes, "multiscale")
    rows = [(k, f"{v['top1_error']:.2f}", f"{v['top5_error']:.2f}") for k, v in members.items()]
    rows.append((f"ensemble of {len(outcomes)}", f"{ens['top1_error']:.2f}",
                 f"{ens['top5_error']:.2f}"))
    best = min(members.values(), key=lambda v: v["top5_error"])
    findings = [
        f"The ensemble's top-5 error is {ens['top5_error']:.2f}% against {best['top5_error']:.2f}% "
        f"for its best member ({ens['top5_error'] - best['top5_error']:+.2f} points; the paper's "
        f"ensemble of six: {TABLE5_TOP5}% top-5 on the test set, best single model 4.49% on "
        "val).",
    ]
    body = ("## Table 5\n\nTop-1 and top-5 error (%) on the validation images with multi-scale "
            "testing; the ensemble averages its members' softmax scores (members may differ in "
            "architecture). The paper's 3.57% is on the ImageNet test set.\n\n"
            + md_table(["net", "top-1 %", "top-5 %"], rows))
    return Report("Table 5: an ensemble on ImageNet", body, findings,
                  results={"table5": {"ensemble": ens, "members": members}},
                  per_run={k: {"multi_scale": v} for k, v in members.items()})
