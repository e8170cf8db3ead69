"""Seconds per training image of the paper's detectors at the paper's image size (Tables
7-8, Appendix A): Faster R-CNN with a ResNet-101 C4 head or the VGG-16 baseline, one 600 x
1000 image per mini-batch, the paper's RPN/RoI settings, in the default precision; and the
projected time of the paper's schedules from it (VOC 07+12: 80k mini-batches of 1 image;
COCO: 320k of 8). Random weights (speed does not depend on them); prints the CPU.

    python benchmarks/detect_paper_cost.py [--backbones resnet101,vgg16] [--iterations 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from reslab.detection import create_detector
from reslab.engine import cpu_info, make_engine

SCHEDULES = {"VOC 07+12 (80k x 1 image)": 80_000, "COCO (320k x 8 images)": 320_000 * 8}


def seconds_per_image(backbone: str, iterations: int, warmup: int, engine) -> float:
    torch.manual_seed(0)
    model = create_detector(backbone, "c4", num_classes=21, min_size=600, max_size=1000)
    model.to(engine.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    image = torch.rand(3, 600, 1000, device=engine.device)
    boxes = torch.tensor([[100.0, 100.0, 300.0, 400.0], [500.0, 200.0, 900.0, 550.0]])
    target = {"boxes": boxes.to(engine.device), "labels": torch.tensor([3, 7]).to(engine.device)}
    for i in range(warmup + iterations):
        if i == warmup:
            start = time.perf_counter()
        with engine.autocast():
            losses = model([image], [target])
        loss = sum(v.float() for v in losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="resnet101,vgg16")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    engine = make_engine(args.device, args.precision, False)
    cpu = cpu_info()
    print(f"machine: {cpu['cpu']} (flags {' '.join(cpu['flags']) or 'none'}; native bf16: "
          f"{cpu['native_bf16']}), torch threads {torch.get_num_threads()}, device "
          f"{engine.device}, precision {engine.precision}")
    for backbone in args.backbones.split(","):
        s = seconds_per_image(backbone, args.iterations, args.warmup, engine)
        line = f"{backbone:>10} C4, 600x1000, batch 1: {s:6.2f} s/image ({1 / s:.3f} images/s)"
        if backbone == "vgg16":
            line = line.replace(" C4", " (fc6/fc7 head)")
        print(line)
        for name, images in SCHEDULES.items():
            print(f"{'':>12}{name}: {images * s / 86400:,.0f} days on this device")


if __name__ == "__main__":
    main()
