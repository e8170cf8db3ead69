"""Table 2: 10-crop top-1 error on ImageNet val of plain-18/34 and ResNet-18/34 (option A):
the deeper plain net is worse than the shallower one, the deeper ResNet better (Sec. 4.1)."""

from __future__ import annotations

from reslab.experiments.imagenet import (
    TABLE2,
    TABLE2_RUNS,
    compare,
    error_rows,
    evaluate_run,
    plan_runs,
)
from reslab.experiments.report import Report
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: plain18/34 and resnet18/34 (option A), 10-crop top-1 error beside "
               "Table 2 (shares its runs with figure4)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE2_RUNS)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    rows = {o.label: evaluate_run(s, o, "10crop") for o in outcomes}
    table, findings = error_rows(rows, TABLE2)
    findings = [f for f in (
        compare(rows, "plain18", "plain34", "Degradation (paper: plain-34 worse than plain-18)"),
        compare(rows, "resnet18", "resnet34", "Depth helps ResNets (paper: ResNet-34 better)"),
        compare(rows, "plain34", "resnet34", "Residual learning at 34 layers"),
    ) if f] + findings
    body = ("## Table 2\n\nTop-1 error (%, 10-crop testing) on the validation images; the "
            "ResNets use option A (zero-padding shortcuts), so they have no more parameters "
            "than the plain nets.\n\n" + table)
    return Report("Table 2: plain and residual nets on ImageNet", body, findings,
                  results={"table2": rows}, per_run={k: {"ten_crop": v} for k, v in rows.items()})
