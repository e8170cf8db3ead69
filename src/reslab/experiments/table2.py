"""Table 2: 10-crop top-1 error on ImageNet val of plain-18/34 and ResNet-18/34 (option A):
the deeper plain net is worse than the shallower one, the deeper ResNet better (Sec. 4.1)."""

from __future__ import annotations

from reslab.experiments.imagenet import TABLE2, TABLE2_RUNS, plan_runs, ten_crop_report
from reslab.experiments.report import Report, imagenet_where
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: plain18/34 and resnet18/34 (option A), 10-crop top-1 error beside "
               "Table 2 (shares its runs with figure4)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE2_RUNS)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    return ten_crop_report(
        s, outcomes, "table2", TABLE2,
        [("plain18", "plain34", "Degradation (paper: plain-34 worse than plain-18)"),
         ("resnet18", "resnet34", "Depth helps ResNets (paper: ResNet-34 better)"),
         ("plain34", "resnet34", "Residual learning at 34 layers")],
        f"Table 2: plain and residual nets on {imagenet_where(s, data)}",
        "Top-1 error (%, 10-crop testing) on the validation images; the ResNets use option A "
        "(zero-padding shortcuts), so they have no more parameters than the plain nets."
        + ("" if imagenet_where(s, data) == "ImageNet" else " The paper's columns are its "
           "ImageNet-1k figures (224 crops), for orientation: this is a miniature."))
