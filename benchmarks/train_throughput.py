"""ResNet-20 training throughput: reslab's trainer vs a conventional PyTorch loop.

Both train ResNet-20 (batch 128, SGD 0.9, wd 1e-4, lr 0.1 with the paper's milestones
scaled to the budget) for the same number of iterations on the same data, then report
images/s of the training loop and the test error after that fixed budget.

- reslab default: `reslab.train.trainer.train` with every engine option at "auto" (uint8
  data on the device, batched crop/flip, per-pixel mean, channels_last, the precision
  `--precision auto` picks, and the kernels `--kernels auto` picks: reslab's fused batch
  norm + ReLU + residual add on CPUs where auto takes them, issue 25).
- reslab eager: the same with `kernels="eager"` (the default before issue 25), side by
  side in the same run; and the other precision as a third row.
- conventional: torchvision `DataLoader` over PIL images with per-image `RandomCrop(32, 4)`,
  `RandomHorizontalFlip`, `ToTensor`, `Normalize`; fp32; NCHW.
- the convolution-only bound (CPU), measured in the same run: the default path's step
  (benchmarks/cifar_step.py, the trainer's recipe) under torch.profiler; the ops that
  profile_step.py groups as convolution forward/backward take C ms per step, so with
  every other op free a step could run at 128 / C images/s. The default's fraction of it
  is how much of the step is not yet convolutions.
- the CPU's GEMM limit, as before: a 2048x2048 GEMM in the default precision gives
  GFLOP/s; divided by the FLOPs of one training image (~242 MFLOP, flop_counter) it is the
  images/s that GEMM speed allows.

Targets (issue 25): on a CPU with native bf16 (the AMX Xeon) the default >= 1,800
images/s, >= 1.45x the eager default, >= 3x the conventional loop and >= 0.65 of the
convolution-only bound; on an AVX2-only CPU >= 1.5x the conventional loop.

Usage: python benchmarks/train_throughput.py [--iterations 300] [--workers 2] [--device auto]
       [--profile-steps 10] [--quick]
`--quick`: 60 iterations per path and 5 profiled steps (a few minutes; the test errors
after so few iterations say nothing).
Data: shared/data's CIFAR-10 JPEG copy when present (beside the repo), else synthetic.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from cifar_step import BATCH, Runner
from cifar_step import Path as StepPath
from cifar_step import load_data as load_step_data
from PIL import Image
from profile_step import PATH_LABEL, classify
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from reslab.data import load_image_data
from reslab.engine import cpu_info, machine_info, pick_device, precision_name
from reslab.evaluate import evaluate_tensors
from reslab.kernels import pick_kernels
from reslab.models import create_model
from reslab.train.recipes import TrainConfig
from reslab.train.schedule import scale_milestones
from reslab.train.trainer import train

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg75.tar.gz"


class PILDataset(Dataset):
    """Images held as PIL images (decoded up front, so JPEG decoding is not timed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def gemm_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n matmul in `dtype` (2 n^3 FLOPs), the median of repeats over about
    `seconds` after two warm-up products."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 200):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e9


def train_flops_per_image(batch: int = 128) -> float:
    """FLOPs of one training image of ResNet-20: forward + backward of a batch, counted by
    torch.utils.flop_counter on the meta device (nothing computed), divided by the batch."""
    model = create_model("resnet20").to("meta").train()
    x = torch.randn(batch, 3, 32, 32, device="meta")
    y = torch.randint(0, 10, (batch,), device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def conv_only_bound(precision: str, kernels: str, steps: int, warmup: int = 5
                    ) -> tuple[float, float, float]:
    """(convolution ms per step, all ops' self ms per step, images/s if every
    non-convolution op took no time) of the default path's training step on the CPU,
    from torch.profiler; convolutions are the ops profile_step.py groups as convolution
    forward/backward (oneDNN kernels and the autograd nodes around them)."""
    data = load_step_data("synthetic:2048:10")  # the content does not change the speed
    runner = Runner(StepPath("default", precision=precision, channels_last=True,
                             kernels=kernels), data)
    runner.run(warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(PATH_LABEL + "default"):
            runner.run(steps)
    conv = total = 0.0
    for e in prof.events():
        label, group = classify(e)
        if label != "default":
            continue
        ms = e.self_cpu_time_total / 1e3 / steps
        total += ms
        conv += ms if group.startswith("convolution") else 0.0
    return conv, total, BATCH / (conv / 1e3)


def conventional(data, iterations: int, workers: int, device: torch.device, seed: int):
    """The loop most CIFAR repositories use; returns (images/s, test error)."""
    torch.manual_seed(seed)
    mean = (data.train.images.float() / 255).mean((0, 2, 3)).tolist()
    std = (data.train.images.float() / 255).std((0, 2, 3)).tolist()
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(mean, std)])
    loader = DataLoader(PILDataset(data.train.images, data.train.labels, train_tf),
                        batch_size=128, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    model = create_model("resnet20", num_classes=len(data.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(scale_milestones(iterations)), 0.1)
    model.train()
    it, images, t0 = 0, 0, time.perf_counter()
    while it < iterations:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            it += 1
            images += y.numel()
            if it == iterations:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    ips = images / (time.perf_counter() - t0)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255 - m) / s

    result = evaluate_tensors(model, data.test.images, data.test.labels, normalize, 1000, device)
    return ips, result.top1_error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="default: shared CIFAR-10 JPEGs, else synthetic")
    p.add_argument("--profile-steps", type=int, default=10,
                   help="profiled steps for the convolution-only bound (after 5 warm-up)")
    p.add_argument("--quick", action="store_true",
                   help="60 iterations per path, 5 profiled steps (the errors say nothing)")
    p.add_argument("--compile", action="store_true",
                   help="add a row for bf16 (or the default) + torch.compile, timed after a "
                        "throwaway 5-iteration run has warmed Inductor's on-disk cache (its "
                        "images/s still include loading the compiled code)")
    args = p.parse_args()
    if args.quick:
        args.iterations, args.profile_steps = min(args.iterations, 60), min(args.profile_steps, 5)
    device = pick_device(args.device)
    spec = args.data or (str(ARCHIVE) if ARCHIVE.is_file() else "synthetic:10000:2000")
    data = load_image_data(spec, progress=False)
    info, cpu = machine_info(device), cpu_info()
    print(f"machine: {info.get('gpu') or cpu['cpu']} ({info['cpu_count']} CPUs; flags "
          f"{' '.join(cpu['flags']) or 'none'}; native bf16: {cpu['native_bf16']}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"data: {data.name} ({len(data.train)} train / {len(data.test)} test), "
          f"ResNet-20, batch 128, {args.iterations} iterations each")
    default = precision_name("auto", device)
    gflops = gemm_gflops(device, torch.bfloat16 if default == "bf16" else torch.float32)
    flops = train_flops_per_image()
    limit = gflops * 1e9 / flops
    print(f"limit        : {limit:8.1f} images/s = 2048x2048 {default} GEMM {gflops:.1f} "
          f"GFLOP/s / {flops / 1e6:.1f} MFLOP per training image (flop_counter, fwd+bwd at "
          "batch 128)")

    def run_reslab(precision: str, compiled: bool = False, warm_up: bool = False,
                   kernels: str = "auto") -> tuple[float, float]:
        iterations = 5 if warm_up else args.iterations
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(model="resnet20", data=spec, out=tmp, iterations=iterations,
                              eval_every=iterations, device=args.device, seed=args.seed,
                              progress=False, tensorboard=False, precision=precision,
                              compile=compiled, kernels=kernels)
            t0 = time.perf_counter()
            rec = train(cfg, data).last
            wall = time.perf_counter() - t0
            run = json.loads((Path(tmp) / "run.json").read_text())
        name = precision + ("+compile" if compiled else "") + (
            f"/{kernels}" if kernels != "auto" else "")
        if warm_up:
            print(f"(compiled {name} once, {wall:.0f} s, to warm Inductor's cache)")
            return rec["images_per_sec"], rec["test_error"]
        print(f"reslab {name:11s}: {rec['images_per_sec']:8.1f} images/s  test error "
              f"{100 * rec['test_error']:.2f}%  ({run['precision']}, kernels "
              f"{run['kernels']}, channels_last={run['channels_last']}; wall {wall:.0f} s)")
        return rec["images_per_sec"], rec["test_error"]

    kernels, why = pick_kernels("auto", device, device.type in ("cpu", "cuda"))
    print(f"kernels      : {why}")
    paths = {"auto": run_reslab("auto")}
    paths["auto/eager"] = run_reslab("auto", kernels="eager")  # the default before issue 25
    other = "bf16" if default == "fp32" else "fp32"
    if device.type != "cpu" or cpu["native_bf16"] or other == "fp32":
        paths[other] = run_reslab(other)
    if args.compile:
        fast = "bf16" if "bf16" in paths else "auto"  # bf16 where it ran, else the default
        run_reslab(fast, compiled=True, warm_up=True)
        paths[f"{fast}+compile"] = run_reslab(fast, compiled=True)
    base_ips, base_err = conventional(data, args.iterations, args.workers, device, args.seed)
    print(f"conventional : {base_ips:8.1f} images/s  test error {100 * base_err:.2f}%  "
          f"(DataLoader, {args.workers} workers, PIL transforms, fp32, NCHW)")
    ips, err = paths["auto"]
    eager_ips = paths["auto/eager"][0]
    fraction = None
    if device.type == "cpu":
        conv_ms, total_ms, bound = conv_only_bound(default, kernels, args.profile_steps)
        fraction = ips / bound
        print(f"conv-only    : {bound:8.1f} images/s = {BATCH} / {conv_ms:.1f} ms of "
              f"convolutions per step ({default}, kernels {kernels}; torch.profiler over "
              f"{args.profile_steps} steps, ops' self time {total_ms:.1f} ms/step, "
              f"convolutions {100 * conv_ms / total_ms:.0f}% of it)")
    fastest = max(paths, key=lambda k: paths[k][0])
    print(f"default path : {ips:.1f} images/s ({default}, kernels {kernels}) = "
          f"{ips / base_ips:.2f}x the conventional loop, {ips / eager_ips:.2f}x the eager "
          f"default ({eager_ips:.1f}), "
          + (f"{fraction:.2f} of the convolution-only bound, " if fraction is not None else "")
          + f"{100 * ips / limit:.1f}% of the GEMM limit ({limit:.0f} images/s), error "
          f"{100 * (err - base_err):+.2f} points")
    fast_precision = precision_name(fastest.split("+")[0].split("/")[0], device)
    print(f"fastest path : {fastest} ({fast_precision}), "
          f"{paths[fastest][0]:.0f} images/s = {paths[fastest][0] / base_ips:.2f}x, error "
          f"{100 * (paths[fastest][1] - base_err):+.2f} points")
    if device.type == "cpu":
        def verdict(ok: bool) -> str:
            return "met" if ok else "missed"

        if cpu["native_bf16"]:
            print(f"targets (CPU with native bf16, issue 25): default >= 1,800 images/s (AMX "
                  f"Xeon): {verdict(ips >= 1800)} ({ips:.0f}); >= 1.45x the eager default: "
                  f"{verdict(ips / eager_ips >= 1.45)} ({ips / eager_ips:.2f}x); >= 3x the "
                  f"conventional loop: {verdict(ips / base_ips >= 3)} ({ips / base_ips:.2f}x); "
                  f">= 0.65 of the convolution-only bound: {verdict(fraction >= 0.65)} "
                  f"({fraction:.2f})")
        else:
            print(f"target (AVX2-only CPU): default >= 1.5x the conventional loop: "
                  f"{'met' if ips / base_ips >= 1.5 else 'missed'} ({ips / base_ips:.2f}x); "
                  f"{100 * ips / limit:.1f}% of the fp32 limit (no target)")


if __name__ == "__main__":
    main()
