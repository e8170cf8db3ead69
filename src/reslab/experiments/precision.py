"""The precision question (issue 10): does bf16 autocast train the paper's CIFAR ResNets
worse than fp32, beyond seed-to-seed noise?

Each net of --models is trained --seeds times in both precisions; a seed fixes the
initial weights and the data order, so `resnet20-fp32-s0` and `resnet20-bf16-s0` differ
only in the autocast dtype. The report compares mean +- sample std over seeds at 25%,
50%, 75% and 100% of the run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from reslab.errors import ReslabError
from reslab.experiments.report import Report, md_table, mean_std, save_figure
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings, make_config

DESCRIPTION = ("resnet20, resnet56 (or --models) trained --seeds times (>= 2; 3+ advised) "
               "in fp32 and in bf16 autocast: is bf16 worse beyond seed noise?")

PRECISIONS = ("fp32", "bf16")
#: Fractions of the run at which the two precisions are compared.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: |bf16 - fp32| beyond this many standard errors of the difference counts as a gap.
Z = 2.0
KEYS = (("train_error", "training"), ("test_error", "test"))


def models(s: Settings) -> list[str]:
    return list(s.models) if s.models else ["resnet20", "resnet56"]


def plan(s: Settings) -> list[RunSpec]:
    """Net by net, seed by seed, fp32 then bf16: complete pairs finish early."""
    if s.seeds < 2:
        raise ReslabError("precision needs --seeds >= 2 to measure seed noise (3+ advised)")
    if s.precision != "auto":
        raise ReslabError("--precision does not apply to precision: it trains both")
    runs = []
    for m in models(s):
        for k in range(s.seeds):
            for p in PRECISIONS:
                spec = make_config(s, f"{m}-{p}-s{k}", m, seed=k)
                runs.append(RunSpec(spec.label, dataclasses.replace(spec.cfg, precision=p)))
    return runs


def at(o: RunOutcome, iteration: int, key: str) -> float | None:
    """`key` (%) of the record at `iteration`, or None."""
    for r in o.records:
        if r["iteration"] == iteration and r.get(key) is not None:
            return 100 * r[key]
    return None


def points(outcomes: list[RunOutcome], iterations: int) -> list[int]:
    """The evaluated iterations nearest FRACTIONS of the run (each once)."""
    its = sorted({r["iteration"] for o in outcomes for r in o.records})
    if not its:
        return []
    return sorted({min(its, key=lambda i: (abs(i - f * iterations), -i)) for f in FRACTIONS})


def images_per_sec(o: RunOutcome) -> float | None:
    """Median training throughput over the run's evaluation intervals."""
    v = [r["images_per_sec"] for r in o.records if r.get("images_per_sec")]
    return statistics.median(v) if v else None


def compare(fp32: list[float], bf16: list[float], paired: list[float]) -> dict:
    """Mean, std of each precision; the difference bf16 - fp32, its standard error
    sqrt((sd_fp32^2 + sd_bf16^2) / n) and whether it exceeds Z standard errors (None
    with one seed: no noise estimate)."""
    (mf, sf), (mb, sb) = mean_std(fp32), mean_std(bf16)
    n = min(len(fp32), len(bf16))
    se = math.sqrt((sf ** 2 + sb ** 2) / n) if n > 1 else None
    diff = mb - mf
    pm, ps = mean_std(paired) if paired else (None, None)
    return {"fp32_mean": mf, "fp32_std": sf, "bf16_mean": mb, "bf16_std": sb, "n": n,
            "diff": diff, "se": se, "z": diff / se if se else None,
            "beyond_noise": None if se is None else abs(diff) > Z * se,
            "paired_diff_mean": pm, "paired_diff_std": ps, "paired_diffs": paired}


def analyse(outcomes: list[RunOutcome], iterations: int) -> dict[str, list[dict]]:
    """model -> one row per (point, key), with compare()'s fields."""
    out: dict[str, list[dict]] = {}
    for model in dict.fromkeys(o.cfg.model for o in outcomes):
        runs = [o for o in outcomes if o.cfg.model == model]
        by = {(o.cfg.precision, o.cfg.seed): o for o in runs}
        seeds = sorted({o.cfg.seed for o in runs})
        rows = []
        for it in points(runs, iterations):
            for key, what in KEYS:
                vals = {p: {k: at(by[p, k], it, key) for k in seeds if (p, k) in by}
                        for p in PRECISIONS}
                f = [v for v in vals["fp32"].values() if v is not None]
                b = [v for v in vals["bf16"].values() if v is not None]
                if not f or not b:
                    continue
                paired = [vals["bf16"][k] - vals["fp32"][k] for k in seeds
                          if vals["fp32"].get(k) is not None
                          and vals["bf16"].get(k) is not None]
                rows.append({"iteration": it, "fraction": it / iterations, "key": key,
                             "what": what, **compare(f, b, paired)})
        out[model] = rows
    return out


def mean_curves(runs: list[RunOutcome], key: str) -> tuple[list[int], list[float], list[float]]:
    """Iterations every run evaluated, mean and std of `key` (%) over the runs."""
    its = sorted(set.intersection(*({r["iteration"] for r in o.records if r.get(key)
                                     is not None} for o in runs)))
    ms = [mean_std([at(o, i, key) for o in runs]) for i in its]
    return its, [m for m, _ in ms], [sd for _, sd in ms]


def figure(s: Settings, outcomes: list[RunOutcome]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(o.cfg.model for o in outcomes))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), dpi=100,
                             squeeze=False)
    colors = {"fp32": "tab:blue", "bf16": "tab:red"}
    for ax, model in zip(axes[0], names, strict=False):
        for p in PRECISIONS:
            runs = [o for o in outcomes if o.cfg.model == model and o.cfg.precision == p
                    and o.records]
            if not runs:
                continue
            for key, style, width in (("train_error", "--", 1.0), ("test_error", "-", 2.2)):
                its, m, sd = mean_curves(runs, key)
                if not its:
                    continue
                ax.plot(its, m, style, color=colors[p], linewidth=width,
                        label=f"{p} {'train' if key == 'train_error' else 'test'}")
                if len(runs) > 1:
                    ax.fill_between(its, [a - b for a, b in zip(m, sd, strict=True)],
                                    [a + b for a, b in zip(m, sd, strict=True)],
                                    color=colors[p], alpha=0.12, linewidth=0)
        seeds = len({o.cfg.seed for o in outcomes if o.cfg.model == model})
        ax.set_title(f"{model}: mean of {seeds} seed{'s' if seeds > 1 else ''} "
                     "(band: +- 1 std)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, s.out / "precision.png")
    return "precision.png"


def _ms(m: float, sd: float) -> str:
    return f"{m:.2f} +- {sd:.2f}"


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    table = analyse(outcomes, s.iterations)
    fig = figure(s, outcomes)
    speed, per_run = _speeds(outcomes)

    body = [
        "## Precision: bf16 autocast vs fp32", "",
        "Each net was trained once per seed in fp32 and once in bf16 autocast; a seed fixes "
        "the initial weights and the data order, so the two runs of a seed differ only in "
        "precision. Errors in %, mean +- sample std over seeds. *training* is the error on "
        "the augmented mini-batches of the interval before the evaluation (train mode), "
        "*test* the error on the test set at that iteration.", "",
        f"Rule: the difference bf16 - fp32 of the means counts as **beyond noise** when "
        f"|diff| > {Z:g} x SE, SE = sqrt((std_fp32^2 + std_bf16^2) / seeds) (the standard "
        f"error of a difference of two means; = pooled std x sqrt(2 / seeds)). With 3 "
        f"seeds this is a lenient test (Student's t at 95% with 4 degrees of freedom "
        f"needs 2.78 SE). The paired column is the mean +- std over seeds of the per-seed "
        f"difference (same init and data order).", "",
    ]
    findings = []
    results_rows = {}
    for model, rows in table.items():
        results_rows[model] = rows
        body += [f"### {model}", ""]
        body.append(md_table(
            ["iteration", "error", "fp32", "bf16", "bf16 - fp32", "SE", "diff / SE",
             "beyond noise", "paired diff"],
            [(f"{r['iteration']} ({100 * r['fraction']:.0f}%)", r["what"],
              _ms(r["fp32_mean"], r["fp32_std"]), _ms(r["bf16_mean"], r["bf16_std"]),
              f"{r['diff']:+.2f}", "n/a" if r["se"] is None else f"{r['se']:.2f}",
              "n/a" if r["z"] is None else f"{r['z']:+.1f}",
              {True: "**yes**", False: "no", None: "n/a (1 seed)"}[r["beyond_noise"]],
              "n/a" if r["paired_diff_mean"] is None
              else _ms(r["paired_diff_mean"], r["paired_diff_std"])) for r in rows]))
        findings += _verdicts(model, rows, speed.get(model, {}))
        body.append("")
    srows = _speed_rows(speed)
    body += ["### Speed", "", "Training images/s (median of the run's evaluation intervals; "
             "mean +- std over seeds) and wall seconds per run (mean, evaluations included)."
             " The machine is shared, so these are rough.", "",
             md_table(["net", "precision", "images/s", "wall s / run"], srows)]
    return Report("Precision: bf16 autocast vs fp32 training", "\n".join(body), findings,
                  figures=[fig],
                  results={"precision": {"rule": f"|bf16 - fp32| > {Z:g} x sqrt((sd_fp32^2 +"
                                                 f" sd_bf16^2) / n)",
                                         "comparisons": results_rows,
                                         "images_per_sec": {m: {p: sp[p]["ips"] for p in sp}
                                                            for m, sp in speed.items()}}},
                  per_run=per_run)


def _speeds(outcomes: list[RunOutcome]) -> tuple[dict[str, dict[str, dict]], dict]:
    """{model: {precision: {"ips": [...], "wall": [...]}}} and per-run fields."""
    speed: dict[str, dict[str, dict]] = {}
    per_run = {}
    for o in outcomes:
        ips = images_per_sec(o)
        per_run[o.label] = {"precision": o.info.get("precision", o.cfg.precision),
                            "images_per_sec": ips}
        cell = speed.setdefault(o.cfg.model, {}).setdefault(o.cfg.precision,
                                                            {"ips": [], "wall": []})
        if ips is not None:
            cell["ips"].append(ips)
        if o.info.get("wall_seconds") is not None:
            cell["wall"].append(o.info["wall_seconds"])
    return speed, per_run


def _speed_rows(speed: dict[str, dict[str, dict]]) -> list[tuple]:
    rows = []
    for model, sp in speed.items():
        for p in PRECISIONS:
            if p in sp and sp[p]["ips"]:
                m, sd = mean_std(sp[p]["ips"])
                w = statistics.fmean(sp[p]["wall"]) if sp[p]["wall"] else None
                rows.append((model, p, f"{m:.0f} +- {sd:.0f}", "n/a" if w is None else f"{w:.0f}"))
    return rows


def _verdicts(model: str, rows: list[dict], sp: dict[str, dict]) -> list[str]:
    """The findings for one net: beyond noise or not, at which points; the speeds."""
    worse = [r for r in rows if r["beyond_noise"] and r["diff"] > 0]
    better = [r for r in rows if r["beyond_noise"] and r["diff"] < 0]
    last = {r["key"]: r for r in rows if r["iteration"] == max(x["iteration"]
                                                                for x in rows)}
    n = rows[0]["n"] if rows else 0
    end = "; ".join(f"{r['what']} {r['bf16_mean']:.2f}% bf16 vs {r['fp32_mean']:.2f}% "
                    f"fp32 ({r['diff']:+.2f} points, {abs(r['diff']) / r['se']:.1f} SE)"
                    if r["se"] else f"{r['what']} {r['bf16_mean']:.2f}% bf16 vs "
                    f"{r['fp32_mean']:.2f}% fp32 ({r['diff']:+.2f} points)"
                    for r in last.values())
    if n < 2:
        verdict = (f"{model} (1 seed): no noise estimate, so no verdict; bf16 - fp32 "
                   "at each point is in the table")
    elif not worse and not better:
        verdict = (f"{model} ({n} seeds): bf16 is within seed noise of fp32 at every "
                   f"compared point")
    else:
        parts = []
        if worse:
            parts.append("bf16 worse beyond noise at " + ", ".join(
                f"{r['what']} @ {r['iteration']} ({r['diff']:+.2f})" for r in worse))
        if better:
            parts.append("bf16 better beyond noise at " + ", ".join(
                f"{r['what']} @ {r['iteration']} ({r['diff']:+.2f})" for r in better))
        verdict = f"{model} ({n} seeds): " + "; ".join(parts)
    findings = [f"{verdict}. At the end: {end}."]
    if all(sp.get(p, {}).get("ips") for p in PRECISIONS):
        f, b = (statistics.fmean(sp[p]["ips"]) for p in PRECISIONS)
        findings.append(f"{model} throughput (median over intervals, mean over seeds): "
                        f"{f:.0f} images/s fp32, {b:.0f} images/s bf16 ({b / f:.2f}x).")
    return findings
