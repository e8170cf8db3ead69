"""Figure 4: training on ImageNet; thin curves the training error, bold the centre-crop
validation error, against epochs; plain-18/34 left, ResNet-18/34 right. The paper finds the
34-layer plain net above the 18-layer one throughout (degradation) and the 34-layer ResNet
below the 18-layer one."""

from __future__ import annotations

from reslab.experiments.imagenet import TABLE2_RUNS, epochs_of, plan_runs
from reslab.experiments.report import (
    Report,
    degradation,
    imagenet_where,
    md_table,
    pct,
    save_figure,
)
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "imagenet"
DESCRIPTION = ("ImageNet: training (thin) and centre-crop validation (bold) error curves of "
               "plain18/34 (left) and resnet18/34 (right), as Figure 4 (shares table2's runs)")


def plan(s: Settings) -> list[RunSpec]:
    return plan_runs(s, TABLE2_RUNS)


def plot(outcomes: list[RunOutcome], path, where: str = "ImageNet") -> None:
    import matplotlib  # late: a heavy optional import, only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, plain in zip(axes, (True, False), strict=True):
        for o in outcomes:
            if o.cfg.model.startswith("plain") != plain or not o.records:
                continue
            x = epochs_of(o)
            line, = ax.plot(x, [100 * r["train_error"] for r in o.records], lw=0.8,
                            label=f"{o.label} train")
            ax.plot(x, [100 * r["test_error"] for r in o.records], lw=2.4,
                    color=line.get_color(), label=f"{o.label} val")
        ax.set_title("plain" if plain else "ResNet")
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"Figure 4 on {where}: thin training, bold centre-crop validation error",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    where = imagenet_where(s, data)
    plot(outcomes, s.out / "figure4.png", where)
    by = {o.label: o for o in outcomes}
    findings = []
    for shallow, deep in (("plain18", "plain34"), ("resnet18", "resnet34")):
        if shallow in by and deep in by:
            findings += degradation(by[shallow], by[deep])
    rows = [(o.label, f"{epochs_of(o)[-1]:.2f}" if o.records else "-",
             pct(o.records[-1]["train_error"]) if o.records else "-",
             pct(o.records[-1]["test_error"]) if o.records else "-") for o in outcomes]
    body = ("## Figure 4\n\nPaper (Figure 4, Sec. 4.1): the 34-layer plain net has higher "
            "training error than the 18-layer plain net through training; with shortcuts the "
            "34-layer net is better than the 18-layer one.\n\nMeasured at the end of the "
            "runs (centre-crop validation error):\n\n"
            + md_table(["net", "epochs", "train error %", "val error %"], rows))
    return Report(f"Figure 4: plain vs residual nets on {where}", body, findings,
                  figures=["figure4.png"])
