"""Shortcut options A, B, C (and plain) for one CIFAR depth: the CIFAR analogue of Table 3's
middle rows (ImageNet ResNet-34: plain 28.54, A 25.03, B 24.52, C 24.19 top-1 %)."""

from __future__ import annotations

from reslab.errors import ReslabError
from reslab.experiments.report import Report, best_test, count_params, final, md_table, pct
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config
from reslab.models.cifar import is_cifar_depth

DESCRIPTION = ("plain vs shortcut options A, B, C at one depth (--depth, default 20): final "
               "errors and parameters, the CIFAR analogue of Table 3")
#: Table 3 (ImageNet, 10-crop top-1 %), for reference.
PAPER_TABLE3 = {"plain": 28.54, "A": 25.03, "B": 24.52, "C": 24.19}


def plan(s: Settings) -> list[RunSpec]:
    if not is_cifar_depth(s.depth):
        raise ReslabError(f"--depth must be a CIFAR depth 6n+2 (8, 14, 20, ...), got {s.depth}")
    d = s.depth
    return [make_config(s, f"plain{d}", f"plain{d}"),
            make_config(s, f"resnet{d}", f"resnet{d}"),  # option A, the paper's CIFAR default
            make_config(s, f"resnet{d}-B", f"resnet{d}", shortcut="B"),
            make_config(s, f"resnet{d}-C", f"resnet{d}", shortcut="C")]


def option(o: RunOutcome) -> str:
    return "plain" if o.cfg.model.startswith("plain") else (o.cfg.shortcut or "A")


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    n = len(data.classes)
    rows = [(o.label, option(o), f"{count_params(o.cfg.model, o.cfg.shortcut, n):,}",
             pct(final(o, "train_error")), pct(final(o, "test_error")), pct(best_test(o)),
             PAPER_TABLE3[option(o)]) for o in outcomes]
    err = {option(o): final(o, "test_error") for o in outcomes}
    findings = []
    if None not in err.values():
        order = sorted(err, key=err.get)
        findings.append("Test error from best to worst: " + ", ".join(
            f"{k} {pct(err[k])}%" for k in order) + " (paper, ImageNet: C < B < A < plain, "
            "A/B/C close to each other and all well below plain).")
        worse = [k for k in ("A", "B", "C") if err[k] >= err["plain"]]
        findings.append("Every shortcut option beat the plain net." if not worse else
                        f"Option(s) {', '.join(worse)} did not beat the plain net at this "
                        "budget.")
    body = (f"## Shortcut options at {s.depth} layers\n\nOption A: identity, zero-padding "
            "where dimensions grow (no parameters); B: projections where dimensions grow; "
            "C: projections everywhere (Sec. 3.3). The paper compares them on ImageNet "
            "(Table 3, ResNet-34); the last column is for reference only.\n\n"
            + md_table(["run", "option", "params", "final train error %",
                        "final test error %", "best test error %",
                        "paper ImageNet top-1 % (34 layers)"], rows))
    return Report(f"Shortcut options A/B/C at depth {s.depth} (CIFAR analogue of Table 3)",
                  body, findings)
