"""Figure 6: CIFAR-10 training on plain nets (left), ResNets (middle) and ResNet-110 vs
ResNet-1202 (right); dashed training error, bold test error."""

from __future__ import annotations

from reslab.analysis.curves import plot_error_curves
from reslab.experiments.report import (
    Report,
    curve_table,
    degradation,
    depth_of,
    depth_trend,
    final,
    pct,
    save_figure,
)
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config

DESCRIPTION = ("plain20/32/44/56 (+110 with --with-plain110), resnet20/32/44/56/110 (+1202 "
               "with --with-1202): the three panels of Figure 6")


def models(s: Settings) -> list[str]:
    if s.models:
        return list(s.models)
    names = [f"plain{d}" for d in (20, 32, 44, 56)] + (["plain110"] if s.with_plain110 else [])
    names += [f"resnet{d}" for d in (20, 32, 44, 56, 110)]
    return names + (["resnet1202"] if s.with_1202 else [])


def plan(s: Settings) -> list[RunSpec]:
    return [make_config(s, m, m) for m in models(s)]


def panels(outcomes: list[RunOutcome]) -> list[tuple[str, list[RunOutcome]]]:
    """The panels that have runs: plain nets, ResNets (but 1202), and 110 vs 1202."""
    plain = sorted((o for o in outcomes if o.cfg.model.startswith("plain")), key=depth_of)
    res = sorted((o for o in outcomes if o.cfg.model.startswith("resnet")), key=depth_of)
    out = [("plain nets", plain), ("ResNets", [o for o in res if depth_of(o) != 1202])]
    if any(depth_of(o) == 1202 for o in res):
        out.append(("ResNet-110 vs ResNet-1202", [o for o in res if depth_of(o) in (110, 1202)]))
    return [(t, runs) for t, runs in out if runs]


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    shown = panels(outcomes)
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.2), dpi=100,
                             squeeze=False)
    for ax, (title, runs) in zip(axes[0], shown, strict=False):
        plot_error_curves({o.label: o.records for o in runs}, None, title=title, ax=ax)
    fig.tight_layout()
    save_figure(fig, s.out / "figure6.png")

    findings = []
    plain = next((r for t, r in shown if t == "plain nets"), [])
    res = [o for o in next((r for t, r in shown if t == "ResNets"), [])]
    if len(plain) > 1:
        findings.append("Plain nets (paper: deeper is worse): "
                        + depth_trend(plain, "train_error", "training error", "higher") + ".")
        findings += degradation(plain[0], plain[-1])
    if len(res) > 1:
        findings.append("ResNets (paper: deeper is better): "
                        + depth_trend(res, "test_error", "test error", "lower") + "; "
                        + depth_trend(res, "train_error", "training error", "lower") + ".")
    by_depth = {depth_of(o): o for o in res}
    for p in plain:
        r = by_depth.get(depth_of(p))
        if r is not None and final(r, "train_error") is not None:
            better = final(r, "train_error") < final(p, "train_error")
            findings.append(
                f"At {depth_of(p)} layers the ResNet ended with {'lower' if better else 'higher'}"
                f" training error than the plain net ({pct(final(r, 'train_error'))}% vs "
                f"{pct(final(p, 'train_error'))}%) and test error {pct(final(r, 'test_error'))}%"
                f" vs {pct(final(p, 'test_error'))}%.")
    big = [o for o in outcomes if o.cfg.model == "resnet1202"]
    if big and 110 in by_depth:
        b, m = big[0], by_depth[110]
        findings.append(
            f"resnet1202 ended at {pct(final(b, 'train_error'), 3)}% training error (paper: "
            f"< 0.1%) and {pct(final(b, 'test_error'))}% test error vs resnet110's "
            f"{pct(final(m, 'test_error'))}% (paper: 7.93% vs 6.43%, overfitting): "
            + ("overfitting shows." if final(b, "test_error") > final(m, "test_error")
               else "no overfitting at this budget."))
    body = ("## Figure 6\n\nPaper (Figure 6, Sec. 4.2): deeper plain nets have higher training "
            "and test error (plain-110 stays above 60%); deeper ResNets have lower training and"
            " test error; ResNet-1202 reaches training error < 0.1% but 7.93% test error vs "
            "6.43% for ResNet-110 (overfitting).\n\n"
            + ("" if any(t.startswith("ResNet-110 vs") for t, _ in shown) else
               "The right panel (ResNet-110 vs ResNet-1202) needs --with-1202.\n\n")
            + "Measured:\n\n" + curve_table(outcomes))
    return Report("Figure 6: plain nets vs ResNets on CIFAR-10", body, findings,
                  figures=["figure6.png"])
