"""Where one ResNet-20 CIFAR training step spends its time on this CPU (torch.profiler).

Runs the step of `cifar_step.py` (batch 128, uint8 images in memory, per-pixel mean,
batched pad-4 crop + flip, channels_last, SGD 0.9 / wd 1e-4, cross-entropy) for each
`--precision` (fp32 and bf16 autocast by default; one model each, their steps interleaved
one by one so that both see the same load): warm-up steps, then `--steps` timed steps
without the profiler (images/s), then `--steps` steps under torch.profiler (CPU
activities). Every op's self time is put in one group:

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

With `--kernels fused`, reslab's fused batch norm + ReLU (+ residual add) ranges
(`reslab::fused_batch_norm_act`) and their backward nodes (`_BatchNormActBackward`) count
as batch norm.

Usage: python benchmarks/profile_step.py [--precision fp32 bf16] [--compile] [--steps 10]
       [--warmup 5] [--threads N] [--data SPEC] [--top 3] [--kernels fused]
Data: synthetic images by default (the content does not change the speed).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from cifar_step import BATCH, PHASES, Path, Runner, cpu_summary, load_data
from torch.profiler import ProfilerActivity, profile, record_function

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
PATH_LABEL = "path:"


def classify(event) -> tuple[str | None, str]:
    """(the path label it ran under, its group), from the names on the event's call chain."""
    chain, phase, e = [], None, event
    while e is not None and phase is None:
        if e.name in PHASES:
            phase = e.name
        else:
            chain.append(e.name)
        e = e.cpu_parent
    label = None
    while e is not None and label is None:
        if e.name.startswith(PATH_LABEL):
            label = e.name[len(PATH_LABEL):]
        e = e.cpu_parent
    return label, _group(phase, [n for n in reversed(chain) if not n.startswith(WRAPPERS)])


def _group(phase: str | None, names: list[str]) -> str:
    """The group of an op in `phase` whose call chain (outermost first) is `names`."""
    if phase is None:
        return "other"
    if phase in PHASE_GROUP:
        return PHASE_GROUP[phase]
    for name in names:
        if "cpp_fused" in name:  # Inductor's kernels: pointwise/reductions, never convolutions
            for group, words in KEYWORDS[1:3]:
                if any(w in name for w in words):
                    return group
            return "element-wise"
    if any(w in n for n in names for w in CASTS):
        return "casts/layout copies"
    for name in names:
        for group, words in KEYWORDS:
            if any(w in name for w in words):
                if group == "convolution":
                    return f"convolution {'forward' if phase == 'step:forward' else 'backward'}"
                return group
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="one or more; several are run interleaved, step by step")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile forward + loss (Inductor compiles their backward too)")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--kernels", choices=("eager", "fused"), default="eager",
                   help="fused: reslab's fused batch norm + ReLU (+ residual add) kernels "
                   "(issue 25; their forward and backward count as batch norm)")
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
    data = load_data(args.data)
    runners = [Runner(Path(prec, precision=prec, channels_last=not args.nchw,
                           compile="fwd+loss" if args.compile else "none",
                           kernels=args.kernels), data)
               for prec in dict.fromkeys(args.precision)]
    warm = {}
    for r in runners:
        t0 = time.perf_counter()
        r.run(args.warmup)
        warm[r.path.name] = time.perf_counter() - t0
    timed = defaultdict(float)  # seconds over the timed steps, interleaved step by step
    for _ in range(args.steps):
        for r in runners:
            t0 = time.perf_counter()
            r.run(1)
            timed[r.path.name] += time.perf_counter() - t0
    wall = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            for r in runners:
                t0 = time.perf_counter()
                with record_function(PATH_LABEL + r.path.name):
                    r.run(1)
                wall[r.path.name] += time.perf_counter() - t0
    ms: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ops: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in prof.events():
        label, g = classify(e)
        if label is None:
            continue
        t = e.self_cpu_time_total / 1e3 / args.steps
        ms[label][g] += t
        ops[label, g][e.name] += t
    fmt = "channels_last" if not args.nchw else "NCHW"
    mode = "torch.compile (fwd+loss)" if args.compile else "eager"
    mode += ", fused batch-norm kernels" if args.kernels == "fused" else ""
    print(f"ResNet-20, batch {BATCH}, {fmt}, {mode}; per precision {args.warmup} warm-up steps, "
          f"then {args.steps} timed and {args.steps} profiled steps, interleaved")
    names = [r.path.name for r in runners]
    for name in names:
        total = sum(ms[name].values())
        ips = args.steps * BATCH / timed[name]
        print(f"\n{'bf16 autocast' if name == 'bf16' else name}: {ips:.1f} images/s unprofiled "
              f"({1e3 * timed[name] / args.steps:.1f} ms/step; warm-up {warm[name]:.1f} s); "
              f"profiled step {1e3 * wall[name] / args.steps:.1f} ms, ops' self time {total:.1f}")
        print("\n| group | ms/step | % of step | top ops (ms/step) |\n|---|---:|---:|---|")
        for g in GROUPS:
            top = sorted(ops[name, g].items(), key=lambda kv: -kv[1])[: args.top]
            tops = ", ".join(f"{n} {t:.1f}" for n, t in top if t >= 0.05)
            print(f"| {g} | {ms[name][g]:.1f} | {100 * ms[name][g] / total:.1f}% | {tops} |")
        print(f"| **total** | **{total:.1f}** | 100% | |")
    if len(names) > 1:
        print("\nside by side (ms/step under the profiler, and % of each step):\n")
        print("| group | " + " | ".join(f"{n} ms | {n} %" for n in names) + " |")
        print("|---|" + "---:|---:|" * len(names))
        for g in [*GROUPS, "total"]:
            cells = []
            for n in names:
                total = sum(ms[n].values())
                v = total if g == "total" else ms[n][g]
                cells.append(f"{v:.1f} | {100 * v / total:.1f}%")
            print(f"| {g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
