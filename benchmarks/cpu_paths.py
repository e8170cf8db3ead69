"""Which way of running the ResNet-20 CIFAR training step is fastest on this CPU?

Every candidate path trains its own ResNet-20 from the same seed on the same stream of
batches and augmentations (the step of `cifar_step.py`: batch 128, uint8 images in memory,
per-pixel mean, batched pad-4 crop + flip, SGD 0.9 / wd 1e-4, cross-entropy), and they
are timed interleaved in one process: warm-up steps for each (compiling, for compiled
paths), then `--rounds` rounds in which each path runs `--steps` steps in turn. Reported:
images/s (median over rounds, and the range), the ratio to eager fp32 (median of the
per-round ratios, each measured minutes apart at most), the first step's time (which
includes compiling), and, as a check that a path computes the same training, the loss of
its last step and the relative distance of its weights to eager fp32's after the same
steps (fp32 paths should agree closely: only rounding differs).

Usage: python benchmarks/cpu_paths.py [--rounds 3] [--steps 20] [--warmup 5]
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="steps per path per round")
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
    runners = [Runner(q, data, args.seed) for q in paths]
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
    ref_w = runners[0].flat_weights()
    ref_loss = runners[0].losses[-1]
    print(f"\nResNet-20, batch {BATCH}, {args.rounds} rounds x {args.steps} steps per path after "
          f"{args.warmup} warm-up steps; {torch.get_num_threads()} threads; "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"\n| path | images/s (median) | range | vs eager fp32 | first step (s) | "
          f"loss @ step {n} | weights vs fp32 |\n|---|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runners):
        med = statistics.median(ips[i])
        ratio = statistics.median(a / b for a, b in zip(ips[i], ips[0], strict=True))
        step_s = BATCH / med
        first = f"{r.first_step_s:.1f}" if r.first_step_s is not None else "-"
        if r.path.compile != "none" and r.first_step_s is not None:
            first += f" (compile ~{r.first_step_s - step_s:.0f})"
        dw = (r.flat_weights() - ref_w).norm() / ref_w.norm()
        loss = r.losses[-1]
        print(f"| {r.path.name} | {med:.0f} | {min(ips[i]):.0f}-{max(ips[i]):.0f} | "
              f"{ratio:.2f}x | {first} | {loss:.4f} ({loss - ref_loss:+.4f}) | {dw:.1e} |")


if __name__ == "__main__":
    main()
