"""ResNet-20 training throughput: reslab's trainer vs a conventional PyTorch loop.

Both train ResNet-20 (batch 128, SGD 0.9, wd 1e-4, lr 0.1 with the paper's milestones
scaled to the budget) for the same number of iterations on the same data, then report
images/s of the training loop and the test error after that fixed budget.

- reslab: `reslab.train.trainer.train` (uint8 data on the device, batched crop/flip,
  per-pixel mean, channels_last; default precision, and bf16 autocast as a second row on
  CPUs with native bf16).
- conventional: torchvision `DataLoader` over PIL images with per-image `RandomCrop(32, 4)`,
  `RandomHorizontalFlip`, `ToTensor`, `Normalize`; fp32; NCHW.
- the CPU's limit, measured in the same run: a 2048x2048 GEMM in the default precision
  (bf16 on CPUs with native bf16, fp32 on AVX2-only ones) gives GFLOP/s; divided by the
  FLOPs of one training image (one forward + backward of ResNet-20 at batch 128, counted
  by `torch.utils.flop_counter`: ~242 MFLOP) it is the images/s that GEMM speed allows.
  The default path's fraction of it is printed beside its ratio to the conventional loop
  and the targets (issue 15): >= 80% of the limit and >= 2.5x on native-bf16 CPUs,
  >= 1.5x on AVX2-only CPUs.

Usage: python benchmarks/train_throughput.py [--iterations 300] [--workers 2] [--device auto]
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
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from reslab.data import load_image_data
from reslab.engine import cpu_info, machine_info, pick_device, precision_name
from reslab.evaluate import evaluate_tensors
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
    p.add_argument("--compile", action="store_true",
                   help="add a row for bf16 (or the default) + torch.compile, timed after a "
                        "throwaway 5-iteration run has warmed Inductor's on-disk cache (its "
                        "images/s still include loading the compiled code)")
    args = p.parse_args()
    device = pick_device(args.device)
    spec = args.data or (str(ARCHIVE) if ARCHIVE.is_file() else "synthetic:10000:2000")
    data = load_image_data(spec, progress=False)
    info, cpu = machine_info(device), cpu_info()
    print(f"machine: {info.get('gpu') or cpu['cpu']} ({info['cpu_count']} CPUs; flags "
          f"{' '.join(cpu['flags']) or 'none'}; native bf16: {cpu['native_bf16']}), "
          f"torch {torch.__version__}, device {device}")
    print(f"data: {data.name} ({len(data.train)} train / {len(data.test)} test), "
          f"ResNet-20, batch 128, {args.iterations} iterations each")
    default = precision_name("auto", device)
    gflops = gemm_gflops(device, torch.bfloat16 if default == "bf16" else torch.float32)
    flops = train_flops_per_image()
    limit = gflops * 1e9 / flops
    print(f"limit        : {limit:8.1f} images/s = 2048x2048 {default} GEMM {gflops:.1f} "
          f"GFLOP/s / {flops / 1e6:.1f} MFLOP per training image (flop_counter, fwd+bwd at "
          "batch 128)")

    def run_reslab(precision: str, compiled: bool = False, warm_up: bool = False
                   ) -> tuple[float, float]:
        iterations = 5 if warm_up else args.iterations
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(model="resnet20", data=spec, out=tmp, iterations=iterations,
                              eval_every=iterations, device=args.device, seed=args.seed,
                              progress=False, tensorboard=False, precision=precision,
                              compile=compiled)
            t0 = time.perf_counter()
            rec = train(cfg, data).last
            wall = time.perf_counter() - t0
            run = json.loads((Path(tmp) / "run.json").read_text())
        name = precision + ("+compile" if compiled else "")
        if warm_up:
            print(f"(compiled {name} once, {wall:.0f} s, to warm Inductor's cache)")
            return rec["images_per_sec"], rec["test_error"]
        print(f"reslab {name:6s}: {rec['images_per_sec']:8.1f} images/s  test error "
              f"{100 * rec['test_error']:.2f}%  ({run['precision']}, channels_last="
              f"{run['channels_last']}; wall {wall:.0f} s)")
        return rec["images_per_sec"], rec["test_error"]

    paths = {"auto": run_reslab("auto")}
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
    fastest = max(paths, key=lambda k: paths[k][0])
    print(f"default path : {ips / base_ips:.2f}x the conventional loop ({default}), "
          f"{100 * ips / limit:.1f}% of the limit ({ips:.0f} of {limit:.0f} images/s), error "
          f"{100 * (err - base_err):+.2f} points")
    print(f"fastest path : {fastest} ({precision_name(fastest.split('+')[0], device)}), "
          f"{paths[fastest][0]:.0f} images/s = {paths[fastest][0] / base_ips:.2f}x, error "
          f"{100 * (paths[fastest][1] - base_err):+.2f} points")
    if device.type == "cpu":
        if cpu["native_bf16"]:
            print(f"targets (CPU with native bf16): default >= 80% of the limit: "
                  f"{'met' if ips >= 0.8 * limit else 'missed'} ({100 * ips / limit:.1f}%); "
                  f"default >= 2.5x the conventional loop: "
                  f"{'met' if ips / base_ips >= 2.5 else 'missed'} ({ips / base_ips:.2f}x)")
        else:
            print(f"target (AVX2-only CPU): default >= 1.5x the conventional loop: "
                  f"{'met' if ips / base_ips >= 1.5 else 'missed'} ({ips / base_ips:.2f}x); "
                  f"{100 * ips / limit:.1f}% of the fp32 limit (no target)")


if __name__ == "__main__":
    main()
