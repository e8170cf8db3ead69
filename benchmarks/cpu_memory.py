"""Gradients in the network's memory format: the CPU step before and after (issue 15, part 3).

On a CPU whose convolutions are fast (AMX bf16), most of a ResNet-20 training step is
memory traffic, and PyTorch's element-wise kernels are ~16x slower when their inputs mix
channels_last and NCHW. Two backward passes of autograd produced NCHW gradients in a
channels_last network: option A's shortcut (`slice_backward` behind `x[:, :, ::2, ::2]`)
and the global average pool (mean's backward), so the gradient sums and ReLU backward
at both downsampling blocks and at the last block took the slow path. reslab's
`ZeroPadShortcut` and `GlobalAvgPool` now keep the input's layout in training.

This script runs the step of `cifar_step.py` (batch 128, the default precision of this CPU
unless --precision) in one child process per variant and round (ABAB, so a noisy
neighbour hits both), and prints images/s, page faults per step (whether memory
allocation is a factor) and a checksum of the weights after the timed steps: equal
checksums mean both computed the same thing, bit for bit.

  before   option A and the pool as autograd differentiates them (earlier versions)
  now      reslab's ZeroPadShortcut and GlobalAvgPool (layout kept)

Usage: python benchmarks/cpu_memory.py [--steps 40] [--rounds 3] [--precision auto]
Data: shared/data's CIFAR-10 JPEG copy when present (beside the repo), else synthetic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("before", "now")


def child(variant: str, steps: int, warmup: int, precision: str) -> None:
    import torch
    from torch import nn

    from reslab.models.blocks import ZeroPadShortcut, zero_pad_shortcut
    from reslab.models.network import GlobalAvgPool

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cifar_step import Path, Runner, load_data

    if variant == "before":
        # option A as earlier versions computed it in training (autograd's slice and pad)
        ZeroPadShortcut.forward = lambda self, x: zero_pad_shortcut(x, self.out_channels,
                                                                    self.stride)
        GlobalAvgPool.forward = nn.AdaptiveAvgPool2d.forward
    runner = Runner(Path(variant, precision=precision), load_data(None, max_images=8192))
    runner.run(warmup)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ips = runner.timed(steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    digest = hashlib.sha256(runner.flat_weights().numpy().tobytes()).hexdigest()[:12]
    print(json.dumps({"variant": variant, "images_per_sec": ips, "faults_per_step": faults,
                      "weights": digest, "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.precision == "auto":
        from reslab.engine import cpu_has_native_bf16

        args.precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if args.child:
        child(args.child, args.steps, args.warmup, args.precision)
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cifar_step import cpu_summary

    print(cpu_summary())
    print(f"ResNet-20 step, batch 128, {args.precision}, channels_last; {args.warmup} warm-up "
          f"+ {args.steps} timed steps per run, {args.rounds} rounds, one process per run")
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--child", v, "--steps", str(args.steps),
                 "--warmup", str(args.warmup), "--precision", args.precision],
                check=True, capture_output=True, text=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            results[v].append(rec)
            print(f"round {r + 1}: {v:8s} {rec['images_per_sec']:7.1f} images/s, "
                  f"{rec['faults_per_step']:7.0f} page faults/step, weights "
                  f"{rec['weights']} ({time.perf_counter() - t0:.0f} s)")
    base = [rec["images_per_sec"] for rec in results["before"]]
    print("\nvariant   images/s (median)  vs before (median of per-round ratios)  faults/step")
    for v in VARIANTS:
        ips = [rec["images_per_sec"] for rec in results[v]]
        ratio = statistics.median(a / b for a, b in zip(ips, base, strict=True))
        faults = statistics.median(rec["faults_per_step"] for rec in results[v])
        print(f"{v:8s}  {statistics.median(ips):17.1f}  {ratio:39.2f}x  {faults:11.0f}")
    digests = {rec["weights"] for recs in results.values() for rec in recs}
    print(f"weights after {args.warmup + args.steps} steps: "
          + ("bit-identical in every run" if len(digests) == 1 else
             f"DIFFER ({len(digests)} distinct checksums)"))


if __name__ == "__main__":
    main()
