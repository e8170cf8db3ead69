"""Table 6: CIFAR-10 test error of ResNet-20..110 (and 1202), with parameter counts; with
several seeds, best and mean +- std per depth (as the paper reports ResNet-110)."""

from __future__ import annotations

from reslab.experiments.report import Report, count_params, depth_of, final, md_table, mean_std
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config

DESCRIPTION = ("final test error and parameters of resnet20/32/44/56/110 (+1202 with "
               "--with-1202) beside Table 6; --seeds K gives best and mean +- std")

#: Table 6 (test error %); ResNet-110 is the best of 5 runs, mean +- std 6.61 +- 0.16.
PAPER_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_110_MEAN_STD = (6.61, 0.16)
#: Sec. 4.2's parameter counts (10 classes, option A).
PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962,
                1202: 19_421_274}


def models(s: Settings) -> list[str]:
    if s.models:
        return list(s.models)
    return [f"resnet{d}" for d in (20, 32, 44, 56, 110)] + (["resnet1202"] if s.with_1202
                                                            else [])


def plan(s: Settings) -> list[RunSpec]:
    if s.seeds == 1:
        return [make_config(s, m, m) for m in models(s)]
    return [make_config(s, f"{m}-s{k}", m, seed=k) for m in models(s) for k in range(s.seeds)]


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    groups: dict[str, list[RunOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.cfg.model, []).append(o)
    rows, table, findings, mismatched = [], [], [], []
    for model, runs in groups.items():
        depth = depth_of(runs[0])
        errs = [100 * final(o, "test_error") for o in runs if final(o, "test_error") is not None]
        params = count_params(model, None, len(data.classes))
        paper = PAPER_ERROR.get(depth)
        if depth == 110:
            paper_s = f"{paper} ({PAPER_110_MEAN_STD[0]} +- {PAPER_110_MEAN_STD[1]})"
        else:
            paper_s = "-" if paper is None else f"{paper}"
        best = min(errs) if errs else None
        mean, std = mean_std(errs) if errs else (None, None)
        measured = "n/a" if best is None else (
            f"{best:.2f}" if len(errs) == 1 else f"{best:.2f} ({mean:.2f} +- {std:.2f})")
        pp = PAPER_PARAMS.get(depth)
        if pp is not None and len(data.classes) == 10 and pp != params:
            mismatched.append(model)
        rows.append({"model": model, "depth": depth, "params": params,
                     "paper_params": pp, "paper_error": paper,
                     "test_errors": errs, "best": best, "mean": mean, "std": std,
                     "runs": len(runs)})
        table.append((model, f"{params:,}", "-" if pp is None else f"{pp:,}", measured,
                      paper_s))
        if paper is not None and best is not None:
            findings.append(f"{model}: {best:.2f}% test error"
                            + (f" (best of {len(errs)}; mean {mean:.2f} +- {std:.2f})"
                               if len(errs) > 1 else "")
                            + f" vs the paper's {paper}% ({best - paper:+.2f} points).")
    ordered = sorted(groups.values(), key=lambda r: depth_of(r[0]))
    if len(ordered) > 1:
        means = [(runs[0].cfg.model, rows_by(rows, runs[0].cfg.model)["mean"])
                 for runs in ordered]
        valid = [(m, v) for m, v in means if v is not None]
        steps = list(zip(valid, valid[1:], strict=False))
        lower = sum(1 for (_, a), (_, b) in steps if b < a)
        seq = ", ".join(f"{m} {v:.2f}%" for m, v in valid)
        findings.insert(0, (f"Deeper is better (paper, up to 110 layers): "
                            f"{lower} of {len(steps)} steps in depth lowered the "
                            f"{'mean ' if s.seeds > 1 else ''}test error ({seq})."))
    if len(data.classes) == 10 and any(m in PAPER_PARAMS for m in (depth_of(r[0])
                                                                      for r in ordered)):
        findings.append("Parameter counts " + ("match the paper's exactly." if not mismatched
                                               else f"differ from the paper's for "
                                               f"{', '.join(mismatched)}."))
    header = ["net", "params", "paper params",
              "test error %" + (" best (mean +- std)" if s.seeds > 1 else ""),
              "paper test error %"]
    body = ("## Table 6\n\nCIFAR-10 test error (%) at the end of training (the paper reports"
            " ResNet-110 as best of 5 runs with mean +- std in brackets"
            + (f"; here {s.seeds} seeds per net, sample std" if s.seeds > 1 else "")
            + ").\n\n" + md_table(header, table)
            + "\nThe paper's Table 6 (test error %): " + ", ".join(
                f"ResNet-{d} {e}" + (f" ({PAPER_110_MEAN_STD[0]} +- {PAPER_110_MEAN_STD[1]})"
                                     if d == 110 else "") for d, e in PAPER_ERROR.items())
            + ".\n")
    return Report("Table 6: ResNets on CIFAR-10", body, findings, results={"table6": rows})


def rows_by(rows: list[dict], model: str) -> dict:
    return next(r for r in rows if r["model"] == model)
