"""Where one ResNet-20 CIFAR training step spends its time on this CPU (torch.profiler).

Runs the step of `cifar_step.py` (batch 128, uint8 images in memory, per-pixel mean,
batched pad-4 crop + flip, channels_last, SGD 0.9 / wd 1e-4, cross-entropy): warm-up
steps, then `--steps` timed steps without the profiler (images/s), then `--steps` steps
under torch.profiler (CPU activities). Every op's self time is put in one group:

  convolution forward / backward  aten convolution ops (oneDNN) and their backward nodes
  batch norm (fwd+bwd)            native_batch_norm and its backward
  element-wise                    relu / threshold_backward, add, pad (option-A shortcut),
                                  slice, copies
  casts/layout copies             _to_copy and ToCopyBackward: the bf16 <-> fp32 copies
                                  autocast inserts, and memory-format copies
  loss                            cross-entropy (log_softmax + nll_loss) forward and backward
  optimizer step                  SGD step and zero_grad
  augmentation/preprocess         batch gather, uint8 -> float, mean, random_crop_flip
  other                           fc, global pooling, gradient accumulation, and the time
                                  between ops (Python, autograd engine)

An op under a _to_copy is a cast; else the outermost op on its call chain that names a
group decides (so the zero-fill inside a convolution counts as convolution, and the
gradient sums the autograd engine does between nodes as element-wise). Under --compile,
Inductor's fused kernels (cpp_fused_*, named after the ops they fuse) count as batch norm
when they include one (a fused batch norm + relu counts as batch norm), else as loss or
element-wise; convolutions stay oneDNN calls.

Usage: python benchmarks/profile_step.py [--precision fp32|bf16] [--compile] [--steps 10]
       [--warmup 5] [--threads N] [--data SPEC] [--top 3]
Data: synthetic images by default (the content does not change the speed).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from cifar_step import BATCH, PHASES, Path, Runner, cpu_summary, load_data
from torch.profiler import ProfilerActivity, profile

GROUPS = ("convolution forward", "convolution backward", "batch norm (fwd+bwd)",
          "element-wise", "casts/layout copies", "loss", "optimizer step",
          "augmentation/preprocess", "other")
CASTS = ("_to_copy", "ToCopyBackward")
# (group, substrings of an op name), tried in this order on each name of the call chain
# from the outermost op down; the first name that matches decides.
KEYWORDS = (
    ("convolution", ("conv2d", "convolution", "Convolution")),
    ("batch norm (fwd+bwd)", ("batch_norm", "BatchNorm")),
    ("loss", ("nll_loss", "log_softmax", "NllLoss", "LogSoftmax", "cross_entropy")),
    ("other", ("addmm", "Addmm", "linear", "mean", "Mean", "avg_pool", "AvgPool",
               "AccumulateGrad")),
    ("element-wise", ("relu", "Relu", "threshold", "Threshold", "add", "Add", "pad", "Pad",
                      "slice", "Slice", "strided", "Strided", "clone", "Clone", "copy", "fill",
                      "zero", "mul")),
)
PHASE_GROUP = {"step:preprocess": "augmentation/preprocess", "step:loss": "loss",
               "step:optimizer": "optimizer step"}
WRAPPERS = ("autograd::engine::evaluate_function", "## ")  # names that say nothing of the op


def classify(event) -> str:
    """The group of one profiler event, from the names on its call chain."""
    chain, phase, e = [], None, event
    while e is not None:
        if e.name in PHASES:
            phase = e.name
            break
        chain.append(e.name)
        e = e.cpu_parent
    if phase is None:
        return "other"
    if phase in PHASE_GROUP:
        return PHASE_GROUP[phase]
    names = [n for n in reversed(chain) if not n.startswith(WRAPPERS)]  # outermost first
    if any(w in n for n in names for w in CASTS):
        return "casts/layout copies"
    for name in names:
        if "cpp_fused" in name:  # Inductor's kernels: pointwise/reductions, never convolutions
            for group, words in KEYWORDS[1:3]:
                if any(w in name for w in words):
                    return group
            return "element-wise"
        for group, words in KEYWORDS:
            if any(w in name for w in words):
                if group == "convolution":
                    return f"convolution {'forward' if phase == 'step:forward' else 'backward'}"
                return group
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile forward + loss (Inductor compiles their backward too)")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--steps", type=int, default=10, help="timed steps, then profiled steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--data", default="synthetic:4096:16")
    p.add_argument("--top", type=int, default=3, help="top ops shown per group")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:  # name Inductor's fused kernels in the profile
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    print(cpu_summary())
    path = Path(f"{args.precision}{' compiled' if args.compile else ''}",
                precision=args.precision, channels_last=not args.nchw,
                compile="fwd+loss" if args.compile else "none")
    runner = Runner(path, load_data(args.data))
    t0 = time.perf_counter()
    runner.run(args.warmup)
    warm = time.perf_counter() - t0
    ips = runner.timed(args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        runner.run(args.steps)
        wall_ms = 1e3 * (time.perf_counter() - t0) / args.steps
    ms: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in prof.events():
        t = e.self_cpu_time_total / 1e3 / args.steps
        g = classify(e)
        ms[g] += t
        ops[g][e.name] += t
    total = sum(ms.values())
    fmt = "channels_last" if path.channels_last else "NCHW"
    mode = "torch.compile (fwd+loss)" if args.compile else "eager"
    prec = "bf16 autocast" if args.precision == "bf16" else "fp32"
    print(f"ResNet-20, batch {BATCH}, {prec}, {fmt}, {mode}; "
          f"{args.warmup} warm-up steps ({warm:.1f} s), {args.steps} timed, {args.steps} profiled")
    print(f"images/s (unprofiled): {ips:.1f}  = {1e3 * BATCH / ips:.1f} ms/step; profiled "
          f"step {wall_ms:.1f} ms (ops' self time sums to {total:.1f} ms)")
    print("\n| group | ms/step | % of step | top ops (ms/step) |\n|---|---:|---:|---|")
    for g in GROUPS:
        top = sorted(ops[g].items(), key=lambda kv: -kv[1])[: args.top]
        names = ", ".join(f"{n} {t:.1f}" for n, t in top if t >= 0.05)
        print(f"| {g} | {ms[g]:.1f} | {100 * ms[g] / total:.1f}% | {names} |")
    print(f"| **total** | **{total:.1f}** | 100% | |")


if __name__ == "__main__":
    main()
