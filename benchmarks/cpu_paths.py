"""Which way of running the ResNet-20 CIFAR training step is fastest on this CPU?

Every candidate path trains its own ResNet-20 from the same seed on the same stream of
batches and augmentations (the step of `cifar_step.py`: batch 128, uint8 images in memory,
per-pixel mean, batched pad-4 crop + flip, SGD 0.9 / wd 1e-4, cross-entropy), and they
are timed interleaved in one process: warm-up steps for each (compiling, for compiled
paths), then `--rounds` rounds in which each path runs `--steps` steps in turn. Reported:
images/s (median and best over rounds: on a shared machine the best round is the least
disturbed), the ratio to eager fp32 (median of the per-round ratios, and best/best), the
first step's time (which includes compiling; Inductor's on-disk cache makes a second run
compile faster), and, as a check that a path computes the same training: the mean loss
of the last 20 steps (the same batches for every path), and the relative distance of its
weights to eager fp32's after step 1, after the warm-up and at the end. Rounding
differences grow step after step (SGD at lr 0.1 from scratch is chaotic), so dw@1 is the
sharp test: about 2e-5 for a reordering of fp32 sums, about 4e-4 for bf16 autocast.

Usage: python benchmarks/cpu_paths.py [--rounds 5] [--steps 8] [--warmup 5]
       [--threads N] [--no-compile] [--all] [--only SUBSTRING ...] [--data SPEC]
Data: shared/data's CIFAR-10 JPEG copy when present (beside the repo), else synthetic.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from cifar_step import BATCH, Path, Runner, cpu_summary, load_data

FP32 = Path("eager fp32")
BF16 = Path("eager bf16 autocast", precision="bf16")


def candidates(compile_: bool, extra: bool, threads: int) -> list[Path]:
    """The paths to measure; the first is the baseline."""
    other_threads = 1 if threads > 1 else 2
    paths = [
        FP32,
        FP32.with_(name="eager fp32, NCHW", channels_last=False),
        FP32.with_(name="eager fp32, SGD foreach=True", sgd="foreach"),
        FP32.with_(name="eager fp32, SGD fused=True", sgd="fused"),
        FP32.with_(name="eager fp32, oneDNN conv fp32_precision=bf16", conv_fp32_precision="bf16"),
        FP32.with_(name=f"eager fp32, {other_threads} thread(s)", threads=other_threads),
        BF16,
        BF16.with_(name="eager bf16, NCHW", channels_last=False),
        BF16.with_(name="eager bf16, BatchNorm in fp32", bn_fp32=True),
        BF16.with_(name="eager bf16, SGD fused=True", sgd="fused"),
        BF16.with_(name=f"eager bf16, {other_threads} thread(s)", threads=other_threads),
    ]
    if compile_:
        paths += [
            FP32.with_(name="compiled fp32 (fwd+loss; bwd by AOTAutograd)", compile="fwd+loss"),
            BF16.with_(name="compiled bf16 (fwd+loss; bwd by AOTAutograd)", compile="fwd+loss"),
            BF16.with_(name="compiled bf16 (fwd+loss, and optimizer.step)",
                       compile="fwd+loss+opt"),
        ]
    if extra:
        paths += [
            FP32.with_(name="eager fp32, oneDNN off (mkldnn.enabled=False)", mkldnn=False),
            FP32.with_(name="eager fp32, SGD foreach + NCHW", sgd="foreach",
                       channels_last=False),
            BF16.with_(name="eager bf16, SGD foreach=True", sgd="foreach"),
        ]
        if compile_:
            paths.append(FP32.with_(name="compiled fp32 (model only)", compile="model"))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per path per round")
    p.add_argument("--warmup", type=int, default=5, help="steps per path before timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile paths")
    p.add_argument("--all", action="store_true", help="also the slower or redundant paths")
    p.add_argument("--only", nargs="*", default=None,
                   help="keep the paths whose name contains one of these (and eager fp32)")
    p.add_argument("--data", default=None, help="default: shared CIFAR-10 JPEGs, else synthetic")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_summary())
    t0 = time.perf_counter()
    data = load_data(args.data)
    print(f"data: {data.name}, {data.images.shape[0]} training images "
          f"(loaded in {time.perf_counter() - t0:.0f} s)")
    paths = candidates(not args.no_compile, args.all, torch.get_num_threads())
    if args.only:
        paths = [q for q in paths if q is FP32 or any(s in q.name for s in args.only)]
    runners = [Runner(q, data, args.seed, snapshot_at=(1, args.warmup)) for q in paths]
    start = time.perf_counter()
    for r in runners:
        t = time.perf_counter()
        r.run(args.warmup)
        print(f"  warm-up {r.path.name}: {time.perf_counter() - t:.1f} s", flush=True)
    ips: list[list[float]] = [[] for _ in runners]
    for k in range(args.rounds):
        for i, r in enumerate(runners):
            ips[i].append(r.timed(args.steps))
        print(f"  round {k + 1}: " + ", ".join(f"{v[-1]:.0f}" for v in ips), flush=True)
    n = runners[0].steps
    last = min(20, n)
    ref = runners[0]
    ref_loss = statistics.fmean(ref.losses[-last:])

    def dw(r: Runner, step: int | None) -> str:
        a = r.flat_weights() if step is None else r.snapshots[step]
        b = ref.flat_weights() if step is None else ref.snapshots[step]
        return f"{float((a - b).norm() / b.norm()):.0e}"

    print(f"\nResNet-20, batch {BATCH}, {args.rounds} rounds x {args.steps} steps per path after "
          f"{args.warmup} warm-up steps; {torch.get_num_threads()} threads; "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"images/s: median and best of the rounds; vs eager fp32: median of the per-round "
          f"ratios, and best/best; loss: mean of steps {n - last + 1}-{n} (same batches for all);"
          f" dw@k: |w - w_fp32| / |w_fp32| after step k")
    print(f"\n| path | images/s | best | vs eager fp32 | best/best | first step (s) | loss "
          f"| dw@1 | dw@{args.warmup} | dw@{n} |\n|---|" + "---:|" * 9)
    for i, r in enumerate(runners):
        ratio = statistics.median(a / b for a, b in zip(ips[i], ips[0], strict=True))
        first = f"{r.first_step_s:.1f}" if r.first_step_s is not None else "-"
        if r.path.compile != "none" and r.first_step_s is not None:
            first += f" (compile ~{r.first_step_s - BATCH / statistics.median(ips[i]):.0f})"
        loss = statistics.fmean(r.losses[-last:])
        print(f"| {r.path.name} | {statistics.median(ips[i]):.0f} | {max(ips[i]):.0f} | "
              f"{ratio:.2f}x | {max(ips[i]) / max(ips[0]):.2f}x | {first} | {loss:.3f} "
              f"({loss - ref_loss:+.3f}) | {dw(r, 1)} | {dw(r, args.warmup)} | {dw(r, None)} |")


if __name__ == "__main__":
    main()
