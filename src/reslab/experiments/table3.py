"""Table 3: 10-crop top-1/top-5 error on ImageNet val of plain-34, ResNet-34 with shortcut
options A, B, C and ResNet-50/101/152 (option B): projections help a little, depth a lot."""

from __future__ import annotations

from reslab.experiments.imagenet import TABLE3, TABLE3_RUNS, plan_runs, ten_crop_report
from reslab.experiments.report import Report
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: plain34, resnet34 A/B/C, resnet50/101/152, 10-crop top-1/top-5 "
               "beside Table 3 (table4 and table5 reuse its runs)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE3_RUNS)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    return ten_crop_report(
        s, outcomes, "table3", TABLE3,
        [("plain34", "resnet34-A", "Residual learning (paper: A beats plain)"),
         ("resnet34-A", "resnet34-B", "Projections where dimensions change (B)"),
         ("resnet34-B", "resnet34-C", "Projections everywhere (C)"),
         ("resnet34-B", "resnet50", "Bottleneck 50 layers"),
         ("resnet50", "resnet101", "101 layers"),
         ("resnet101", "resnet152", "152 layers")],
        "Table 3: shortcut options and deeper ResNets on ImageNet",
        "Top-1 and top-5 error (%, 10-crop testing) on the validation images.")
