"""Figure 7: standard deviations of the 3x3 layers' responses on the CIFAR-10 test set
(after BN, before the nonlinearity / the addition), in network order and sorted; the
paper finds ResNet responses smaller than plain ones, and smaller in deeper ResNets."""

from __future__ import annotations

import statistics

from reslab.analysis.responses import layer_response_stds, plot_responses
from reslab.engine import pick_device
from reslab.experiments.report import Report, depth_of, md_table
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config
from reslab.inference import load_model

DESCRIPTION = ("std of every 3x3 layer's response of plain20/56 and resnet20/56/110 on the "
               "test set, in network order and sorted (reuses finished runs in --out)")
MODELS = ("plain20", "plain56", "resnet20", "resnet56", "resnet110")


def plan(s: Settings) -> list[RunSpec]:
    return [make_config(s, m, m) for m in (s.models or MODELS)]


def measure(o: RunOutcome, data, device: str) -> list[float]:
    """Per-layer response stds of the run's final weights (last.pt) on the test split."""
    loaded = load_model(o.out / "last.pt")
    stds = layer_response_stds(loaded.model, data.test.images, loaded.preprocess,
                               device=pick_device(device))
    return list(stds.values())


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    stds = {o.label: measure(o, data, s.device) for o in outcomes}
    plot_responses(stds, s.out / "figure7.png", title=f"Figure 7: layer responses on {data.name}")
    mean = {k: statistics.fmean(v) for k, v in stds.items()}
    rows = [(k, len(v), f"{mean[k]:.3f}", f"{max(v):.3f}", f"{min(v):.3f}")
            for k, v in stds.items()]
    findings = []
    by = {(o.cfg.model.startswith("resnet"), depth_of(o)): o.label for o in outcomes}
    for (residual, depth), label in sorted(by.items()):
        plain = by.get((False, depth))
        if residual and plain is not None:
            smaller = mean[label] < mean[plain]
            findings.append(f"At {depth} layers the ResNet's responses are "
                            f"{'smaller' if smaller else 'not smaller'} than the plain net's "
                            f"(mean std {mean[label]:.3f} vs {mean[plain]:.3f}; paper: "
                            "smaller).")
    res = sorted((o for o in outcomes if o.cfg.model.startswith("resnet")), key=depth_of)
    if len(res) > 1:
        seq = ", ".join(f"{o.label} {mean[o.label]:.3f}" for o in res)
        dec = all(mean[b.label] < mean[a.label] for a, b in zip(res, res[1:], strict=False))
        findings.append(f"Deeper ResNets have {'smaller' if dec else 'not always smaller'} "
                        f"responses (mean std: {seq}; paper: smaller in deeper ResNets).")
    body = ("## Figure 7\n\nStandard deviation of each 3x3 layer's response on the test set "
            "(after BN, before the ReLU; in residual blocks before the addition), final "
            "weights, eval mode. Paper: ResNets have generally smaller responses than their "
            "plain counterparts, and deeper ResNets smaller ones still.\n\n"
            + md_table(["net", "3x3 layers", "mean std", "max std", "min std"], rows))
    return Report("Figure 7: layer responses", body, findings, figures=["figure7.png"],
                  per_run={k: {"response_stds": v} for k, v in stds.items()})
