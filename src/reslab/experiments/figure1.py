"""Figure 1: training and test error of 20- and 56-layer plain nets on CIFAR-10; the
deeper net has higher training and test error (the degradation problem)."""

from __future__ import annotations

from reslab.analysis.curves import plot_error_curves
from reslab.experiments.report import Report, curve_table, degradation
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config

DESCRIPTION = ("plain20 vs plain56: training (dashed) and test (bold) error curves; the "
               "paper finds the deeper plain net worse in both (degradation)")
MODELS = ("plain20", "plain56")


def plan(s: Settings) -> list[RunSpec]:
    return [make_config(s, m, m) for m in MODELS]


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    plot_error_curves({o.label: o.records for o in outcomes}, s.out / "figure1.png",
                      title=f"Figure 1: plain nets on {data.name}")
    body = ("## Figure 1\n\nPaper (Figure 1, Sec. 1): the 56-layer plain net has *higher "
            "training error* and thus higher test error than the 20-layer plain net.\n\n"
            "Measured:\n\n" + curve_table(outcomes))
    return Report("Figure 1: the degradation problem of plain nets", body,
                  degradation(outcomes[0], outcomes[1]), figures=["figure1.png"])
