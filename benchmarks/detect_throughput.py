"""Detection training throughput: `reslab detect train`'s loop vs a conventional
torchvision-reference-style loop, side by side in one run (issue 16).

Both train the same Faster R-CNN (torchvision's, the backbone and head asked for, from
scratch) on the same data at the same image size and mini-batch, for the same number of
iterations after the same warm-up, and report training images/s:

- reslab: `reslab.detection.trainer.train_detector` (the trainer `reslab detect train`
  runs): bf16 autocast on CPUs with native bf16 and on CUDA (fp32 elsewhere, as
  `--precision auto`), mini-batches made by the run's seeded source; its images/s is the
  metrics record's (the evaluation after the warm-up is not counted).
- conventional: as torchvision's detection reference (references/detection/train.py): a
  `DataLoader` over the dataset with per-image transforms (`ToDtype(float32, scale=True)`,
  `RandomHorizontalFlip(0.5)` on tv_tensors boxes), `collate_fn=tuple(zip(*batch))`,
  fp32, SGD 0.9.

Prints the CPU (name, SIMD flags, native bf16), the two rates and their ratio, and (with
--eval) the mAP@.5 of both after the same iterations on the test split. Usage:
python benchmarks/detect_throughput.py [--iterations 20] [--warmup 3] [--backbone resnet18]
  [--head c4] [--min-size 320] [--max-size 512] [--batch-size 2] [--data synthetic-det:...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from reslab.detection import (
    DetectConfig,
    create_detector,
    evaluate_detections,
    open_detection_data,
    train_detector,
)
from reslab.detection.inference import detect_dataset
from reslab.engine import cpu_info, machine_info, make_engine, pick_device, precision_name


class ReferenceDataset(torch.utils.data.Dataset):
    """The training images with torchvision-reference per-image transforms."""

    def __init__(self, data, indices: list[int]) -> None:
        self.data, self.indices = data, indices
        self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.RandomHorizontalFlip(0.5)])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        image, target = self.data[self.indices[k]]
        keep = ~target["difficult"]
        boxes = tv_tensors.BoundingBoxes(target["boxes"][keep], format="XYXY",
                                         canvas_size=tuple(image.shape[-2:]))
        image, boxes = self.transform(tv_tensors.Image(image), boxes)
        return image.as_subclass(torch.Tensor), {
            "boxes": boxes.as_subclass(torch.Tensor), "labels": target["labels"][keep]}


def collate(batch):
    return tuple(zip(*batch, strict=True))


def reference_loop(args, data, device: torch.device) -> tuple[float, object]:
    """images/s of the conventional loop over `args.iterations` after `args.warmup` (the
    same detector: the paper's RPN/RoI settings, as DetectConfig's defaults)."""
    torch.manual_seed(args.seed)
    model = create_detector(args.backbone, args.head, len(data.classes) + 1,
                            min_size=args.min_size, max_size=args.max_size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(ReferenceDataset(data, data.indices_with_objects()),
                        batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate, drop_last=True)
    model.train()
    done, start, timed = 0, None, 0
    while done < args.warmup + args.iterations:
        for images, targets in loader:
            if done == args.warmup:
                start, timed = time.perf_counter(), 0
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            timed += len(images)
            if done == args.warmup + args.iterations:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return timed / (time.perf_counter() - start), model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic-det:train=64,test=8,size=384,objects=3")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="test")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--head", default="c4", choices=["c4", "fpn"])
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--max-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="of the reslab loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="also mAP@.5 of both on the test split")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    device = pick_device(args.device)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu']}; flags {' '.join(cpu['flags']) or '-'}; native bf16: "
          f"{cpu['native_bf16']}; device {device}; torch threads {torch.get_num_threads()}")
    data = open_detection_data(args.data, args.train_split)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DetectConfig(backbone=args.backbone, head=args.head, data=args.data,
                           train_split=args.train_split, val_split=args.val_split,
                           iterations=args.warmup + args.iterations,
                           eval_every=args.warmup, batch_size=args.batch_size,
                           min_size=args.min_size, max_size=args.max_size, lr=args.lr,
                           workers=args.workers, device=args.device, precision=args.precision,
                           seed=args.seed, out=str(Path(tmp) / "run"), progress=False,
                           tensorboard=False)
        result = train_detector(cfg)
        ours = result.last["images_per_sec"]  # the interval after the warm-up's evaluation
        ours_map = result.last["map50"]
    theirs, model = reference_loop(args, data, device)
    theirs_map = None
    if args.eval:
        test = open_detection_data(args.data, args.val_split)
        engine = make_engine(args.device, "fp32", channels_last=False)
        theirs_map = evaluate_detections(test, detect_dataset(model, test, engine))["map50"]
    ours_precision = precision_name(args.precision, device)
    print(f"{args.backbone} {args.head}, {args.min_size}-{args.max_size} px, batch "
          f"{args.batch_size}, {args.iterations} timed iterations after {args.warmup}")
    print(f"  reslab detect train ({ours_precision}): {ours:8.2f} images/s"
          + (f"   mAP@.5 {100 * ours_map:.1f}%" if args.eval else ""))
    print(f"  conventional loop (fp32):    {theirs:8.2f} images/s"
          + (f"   mAP@.5 {100 * theirs_map:.1f}%" if args.eval else ""))
    print(f"  ratio: {ours / theirs:.2f}x (target on a CPU with native bf16: >= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_info(device), "args": vars(args), "reslab_images_per_sec": ours,
            "reslab_precision": ours_precision, "conventional_images_per_sec": theirs,
            "ratio": ours / theirs, "reslab_map50": ours_map if args.eval else None,
            "conventional_map50": theirs_map}, indent=2) + "\n")


if __name__ == "__main__":
    main()
