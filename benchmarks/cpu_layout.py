"""One CPU training process of N threads against N processes of one thread (issue 15, part 3).

Small 16-channel convolutions may scale poorly across OpenMP threads (every op ends in a
barrier), so on a CPU the same global batch of 128 may train faster as N data-parallel
ranks of one thread each (`torchrun --nproc-per-node N`, gloo; each rank takes 128 / N
images, DDP averages the gradients) than as one process of N threads. This script runs
`reslab train` (ResNet-20, the CIFAR recipe, the default precision) both ways, alternating
the layouts round by round (ABAB, so that a noisy neighbour hits both), and prints the
training images/s each reports (evaluation and start-up excluded) and their ratio.

Arithmetic: the optimisation is the same (global batch 128, same lr), but batch-norm
statistics are per rank, over 128 / N images: with N = 2 that is the paper's own setting
(Sec. 4.2: mini-batch 128 on two GPUs), not the one-process run's 128.

Usage: python benchmarks/cpu_layout.py [--iterations 120] [--rounds 2] [--procs 2]
Data: shared/data's CIFAR-10 JPEG copy when present (beside the repo), else synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reslab.engine import cpu_info

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg75.tar.gz"


def run_layout(procs: int, threads: int, data: str, iterations: int, tmp: Path,
               extra: list[str]) -> dict:
    """Train for `iterations` in the given layout; the last metrics record, plus wall time."""
    out = tmp / f"{procs}x{threads}-{time.monotonic_ns()}"
    train = ["train", "--model", "resnet20", "--data", data, "--out", str(out),
             "--iterations", str(iterations), "--eval-every", str(iterations),
             "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if procs == 1:
        cmd = [sys.executable, "-m", "reslab", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), "-m", "reslab", *train]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    record["wall"] = wall
    record["precision"] = json.loads((out / "run.json").read_text())["precision"]
    shutil.rmtree(out, ignore_errors=True)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=120)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1),
                   help="N: ranks of the multi-process layout, threads of the single one")
    p.add_argument("--data", default=None, help="default: shared CIFAR-10 JPEGs, else synthetic")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    data = args.data or (str(ARCHIVE) if ARCHIVE.is_file() else "synthetic:10000:2000")
    cpu = cpu_info()
    print(f"machine: {cpu['cpu']} ({os.cpu_count()} CPUs; flags {' '.join(cpu['flags'])}; "
          f"native bf16: {cpu['native_bf16']}), torch {torch.__version__}")
    print(f"data: {data}; ResNet-20, global batch 128, {args.iterations} iterations per run, "
          f"{args.rounds} rounds, precision {args.precision}")
    layouts = [(1, args.procs), (args.procs, 1)]
    results: dict[tuple[int, int], list[dict]] = {lay: [] for lay in layouts}
    extra = ["--precision", args.precision]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for procs, threads in layouts:
                rec = run_layout(procs, threads, data, args.iterations, Path(tmp), extra)
                results[(procs, threads)].append(rec)
                print(f"round {r + 1}: {procs} process(es) x {threads} thread(s): "
                      f"{rec['images_per_sec']:7.1f} images/s ({rec['precision']}), train "
                      f"error {100 * rec['train_error']:.1f}%, test error "
                      f"{100 * rec['test_error']:.1f}%, wall {rec['wall']:.0f} s", flush=True)
    one, many = (statistics.median(r["images_per_sec"] for r in results[lay]) for lay in layouts)
    ratios = [b["images_per_sec"] / a["images_per_sec"]
              for a, b in zip(results[layouts[0]], results[layouts[1]], strict=True)]
    print(f"1 process x {args.procs} threads : {one:7.1f} images/s (median)")
    print(f"{args.procs} processes x 1 thread : {many:7.1f} images/s (median)")
    print(f"ratio {args.procs}x1 / 1x{args.procs}: {statistics.median(ratios):.2f} "
          f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
