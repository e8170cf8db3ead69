"""`reslab reproduce`: the paper's CIFAR-10 experiments (Figures 1, 6, 7, Table 6, and the
shortcut options), one command each."""

from __future__ import annotations

import argparse
import sys

from reslab.errors import ReslabError
from reslab.experiments import EXPERIMENTS, Settings, describe, reproduce


def register(sub: argparse._SubParsersAction) -> None:
    experiments = "\n".join(f"  {name:10s} {describe(name)}" for name in EXPERIMENTS)
    p = sub.add_parser(
        "reproduce",
        help="reproduce a CIFAR-10 figure or table of the paper",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce one of the paper's CIFAR-10 experiments: train every net it "
        "needs with the paper's recipe (Sec. 4.2) on one data load, then write results.json,"
        " the figures and report.md (measured numbers beside the paper's) into --out.\n\n"
        "Experiments:\n" + experiments + "\n\n"
        "Runs live in OUT/runs/<label>; re-running the same command reuses finished runs "
        "and resumes an unfinished one, so Ctrl-C is safe. figure7 reuses the runs of a "
        "figure6/figure1 command in the same --out. --budget 0.1 trains every net for 6400 "
        "iterations (milestones scaled).",
    )
    p.add_argument("experiment", choices=EXPERIMENTS, metavar="EXPERIMENT",
                   help=f"one of {', '.join(EXPERIMENTS)}")
    p.add_argument("--data", default="cifar10", help="as for `reslab train` (default cifar10)")
    p.add_argument("--data-root", default=None, help="where cifar10 lives")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--budget", type=float, default=1.0,
                   help="fraction of the paper's 64k iterations per run (default 1.0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="table6: runs per net; reports best and mean +- std (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="as for `reslab train` (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch (paper: 128)")
    p.add_argument("--eval-points", type=int, default=40,
                   help="evaluations per run, the points of the curves (default 40)")
    p.add_argument("--models", default=None,
                   help="figure6/table6/figure7: comma-separated nets instead of the paper's "
                   "set, e.g. plain20,plain56,resnet20,resnet56")
    p.add_argument("--with-1202", action="store_true",
                   help="figure6/table6: add ResNet-1202 (19.4M parameters; slow)")
    p.add_argument("--with-plain110", action="store_true", help="figure6: add plain-110")
    p.add_argument("--depth", type=int, default=20, help="shortcuts: the CIFAR depth (6n+2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train N runs at once in worker processes, spread over the visible "
                   "GPUs (several small CIFAR runs share one GPU well) or over the CPU cores "
                   "(threads divided); finished runs are still skipped (default 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise ReslabError("--models needs at least one network name")
        if args.experiment in ("figure1", "shortcuts"):
            raise ReslabError(f"--models does not apply to {args.experiment}")
    if args.seeds != 1 and args.experiment != "table6":
        raise ReslabError("--seeds applies to table6 only")
    s = Settings(data=args.data, out=args.out, budget=args.budget, seeds=args.seeds,
                 device=args.device, batch_size=args.batch_size, eval_points=args.eval_points,
                 models=models, with_1202=args.with_1202, with_plain110=args.with_plain110,
                 depth=args.depth, data_root=args.data_root, progress=args.progress,
                 precision=args.precision, jobs=args.jobs)
    outcome = reproduce(args.experiment, s)
    if outcome.status != "finished":
        print(f"reslab reproduce: {outcome.message}", file=sys.stderr)
        return 130
    print(f"done: report in {outcome.report}")
    return 0
