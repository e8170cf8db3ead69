"""Where bf16 autocast hurts: the same run (same seed, data order, augmentation) with single
parts of the network kept in fp32 (issue 10, the precision question).

Trains a CIFAR net with the paper's recipe for the first `--iterations` iterations of a
`--schedule`-iteration run (so the lr is the run's, not a shortened schedule's) under each
variant, and prints the training error of each evaluation interval and the final test
error, side by side:
  fp32          no autocast
  bf16          bf16 autocast as reslab runs it: convolutions and the classifier in bf16,
                the residual addition in fp32 (`reslab.models.blocks._combine`)
  bf16+add16    ... with the residual addition rounded to bf16 (reslab before the fix)
  bf16+bn32     ... with every batch-norm layer computed in fp32
  bf16+ends32   ... with the first conv and the classifier in fp32
Usage: python benchmarks/precision_parts.py [--model resnet56] [--iterations 300]
       [--variants fp32,bf16,bf16+add16,bf16+bn32,bf16+ends32] [--data D]
       python benchmarks/precision_parts.py --speed --model resnet20   (the cost of each)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data import Preprocess, load_image_data, per_pixel_mean, random_crop_flip
from reslab.engine import Engine, cpu_info
from reslab.models import blocks
from reslab.models.registry import resolve
from reslab.train import trainer
from reslab.train.recipes import TrainConfig

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg75.tar.gz"


def fp32_forward(module: nn.Module) -> None:
    """Run `module` outside autocast, on fp32 input (its output is fp32)."""
    original = module.forward

    def forward(self, x):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return original(x.float())

    module.forward = types.MethodType(forward, module)


def low_precision_combine(block: nn.Module, x: torch.Tensor, residual: torch.Tensor
                          ) -> torch.Tensor:
    """The residual addition in the autocast dtype (bf16): reslab's block before the fix."""
    shortcut = blocks.shortcut_of(block, x)
    if shortcut is None:
        return block.relu(residual)
    return block.relu(residual + shortcut.to(residual.dtype))


def patched_build(parts: set[str]):
    original = trainer.build

    def build(spec):
        model = original(spec)
        if "bn32" in parts:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    fp32_forward(m)
        if "ends32" in parts:
            fp32_forward(model.conv1)
            fp32_forward(model.fc)
        return model

    return build


def run(variant: str, args, data) -> list[dict]:
    precision, *parts = variant.split("+")
    parts = set(parts)
    saved = trainer.build, blocks._combine
    trainer.build = patched_build(parts)
    if "add16" in parts:
        blocks._combine = low_precision_combine
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.cifar(
                model=args.model, data=args.data, out=tmp, iterations=args.iterations,
                milestones=(args.schedule // 2, args.schedule * 3 // 4),
                eval_every=args.iterations // args.points, precision=precision,
                device="cpu", seed=args.seed, progress=False, tensorboard=False)
            t0 = time.perf_counter()
            result = trainer.train(cfg, data)
            print(f"{variant:12s} done in {time.perf_counter() - t0:.0f} s", flush=True)
            return list(trainer.read_metrics(Path(tmp) / "metrics.jsonl")) or [result.last]
    finally:
        trainer.build, blocks._combine = saved


def speed(args, data) -> None:
    """Images/s of each variant's training step, side by side in interleaved rounds (the
    cost of keeping a part in fp32), on the first 128-image batches of the data."""
    torch.manual_seed(args.seed)
    pre = Preprocess(per_pixel_mean(data.train.images))
    x = random_crop_flip(pre(data.train.images[:128]), 4).contiguous(
        memory_format=torch.channels_last)
    y = data.train.labels[:128]
    runs = {}
    for v in args.variants.split(","):
        precision, *parts = v.split("+")
        model = patched_build(set(parts))(resolve(args.model, len(data.classes)))
        model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        engine = Engine(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else None,
                        channels_last=True)
        runs[v] = (model, opt, engine, "add16" in set(parts), [])
    saved = blocks._combine
    for _ in range(args.rounds + 1):  # the first round warms up
        for model, opt, engine, add16, times in runs.values():
            blocks._combine = low_precision_combine if add16 else saved
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = F.cross_entropy(engine(model, x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
    blocks._combine = saved
    base = None
    for v, (*_, times) in runs.items():
        ips = 128 * args.steps / statistics.median(times[1:])
        base = base or ips
        print(f"{v:12s} {ips:7.0f} images/s  ({ips / base:.2f}x the first)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--schedule", type=int, default=1000,
                   help="the run whose start this is (milestones at 1/2 and 3/4 of it)")
    p.add_argument("--points", type=int, default=3, help="evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="fp32,bf16,bf16+add16")
    p.add_argument("--data", default=str(ARCHIVE) if ARCHIVE.is_file() else "synthetic")
    p.add_argument("--speed", action="store_true",
                   help="instead: images/s of each variant's step, interleaved rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    info = cpu_info()
    print(f"CPU: {info['cpu']} ({' '.join(info['flags'])}; native bf16 {info['native_bf16']}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, "
          f"{args.iterations} of {args.schedule} iterations, seed {args.seed}", flush=True)
    data = load_image_data(args.data, progress=False)
    if args.speed:
        return speed(args, data)
    results = {v: run(v, args, data) for v in args.variants.split(",")}
    its = [r["iteration"] for r in next(iter(results.values()))]
    print("\ntraining error % of each interval (and test error % at the end):")
    print(f"{'variant':12s} " + " ".join(f"{'it ' + str(i):>8s}" for i in its) + "     test")
    for v, records in results.items():
        print(f"{v:12s} " + " ".join(f"{100 * r['train_error']:8.1f}" for r in records)
              + f" {100 * records[-1]['test_error']:8.1f}")


if __name__ == "__main__":
    main()
