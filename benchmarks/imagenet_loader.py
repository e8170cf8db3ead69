"""Images/s of the ImageNet training input pipeline (Sec. 3.4 augmentation).

Builds a folder of ImageNet-size JPEGs (500x375, upscaled CIFAR-10 images from
../shared/data/cifar10-jpeg75.tar.gz, or random images when it is absent), then times,
in the same run, with the same workers and batch size:

  reslab       ImageFolderDataset (torchvision.io.decode_image) + reslab's v2 transforms on
               uint8 tensors (shorter side U[256,480] -> crop 224 -> flip -> float ->
               PCA lighting -> mean): the default (resize and crop fused: crop the source
               box, resize only it), the literal resize-then-crop (`fused=False`), and
               `to_float=False` (uint8 crops; float/lighting/mean done later on the
               device, not timed here)
  torchvision  datasets.ImageFolder (PIL) + PIL transforms: Resize(random 256..480) ->
               RandomCrop(224) -> flip -> ToTensor -> Normalize (no lighting)

    python benchmarks/imagenet_loader.py [--images 400] [--workers 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from reslab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset
from reslab.data.imagenet import imagenet_train_transform as reslab_transform

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"


def make_folder(root: Path, n: int, size=(500, 375), classes: int = 10, seed: int = 0) -> str:
    """n JPEGs (quality 90) of `size` in root/<class>/; returns where they came from."""
    rng = random.Random(seed)
    sources: list[Image.Image] = []
    origin = "random images"
    if CIFAR.exists():
        with tarfile.open(CIFAR) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg") and "/train/" in f"/{m.name}":
                    sources.append(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                    if len(sources) >= n:
                        break
        origin = f"upscaled {CIFAR.name}"
    for i in range(n):
        if i < len(sources):
            img = sources[i].resize(size, Image.BICUBIC)
        else:
            g = torch.Generator().manual_seed(seed + i)
            small = torch.randint(0, 256, (24, 32, 3), dtype=torch.uint8, generator=g)
            img = Image.fromarray(small.numpy()).resize(size, Image.BICUBIC)
        d = root / f"class{rng.randrange(classes):02d}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:05d}.JPEG", quality=90)
    return origin


class PILRandomShorterSide:
    """Resize a PIL image so its shorter side is uniform in [lo, hi] (the baseline's)."""

    def __init__(self, lo: int = 256, hi: int = 480) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, img: Image.Image) -> Image.Image:
        return T.functional.resize(img, random.randint(self.lo, self.hi))


def torchvision_dataset(root: Path):
    tf = T.Compose([PILRandomShorterSide(), T.RandomCrop(224), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torchvision.datasets.ImageFolder(str(root), transform=tf)


def make_loader(dataset, workers: int, batch: int) -> DataLoader:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True,
                        prefetch_factor=4 if workers else None)
    for _ in loader:  # warm-up epoch: starts the persistent workers
        pass
    return loader


def images_per_s(loader: DataLoader, epochs: int) -> float:
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="passes over the folder per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per pipeline (median shown)")
    p.add_argument("--dir", type=Path, default=None, help="reuse/keep the JPEG folder here")
    a = p.parse_args()
    torch.manual_seed(0)
    tmp = a.dir or Path(tempfile.mkdtemp(prefix="reslab-imnet-bench-"))
    try:
        if not any(tmp.rglob("*.JPEG")):
            origin = make_folder(tmp, a.images)
        else:
            origin = "existing folder"
        n = sum(1 for _ in tmp.rglob("*.JPEG"))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"torch {torch.__version__}, torchvision {torchvision.__version__}")
        print(f"data: {n} JPEGs 500x375 ({origin}) in {tmp}; workers={a.workers} "
              f"batch={a.batch}; median of {a.repeats} interleaved timings of {a.epochs} epoch(s) "
              "each, after a warm-up epoch")
        per_channel = torch.tensor(IMAGENET_MEAN)
        runs = {
            "reslab (fused scale+crop)": ImageFolderDataset(
                tmp, reslab_transform(per_channel, IMAGENET_STD, lighting=0.1)),
            "reslab (resize, then crop)": ImageFolderDataset(
                tmp, reslab_transform(per_channel, IMAGENET_STD, lighting=0.1, fused=False)),
            "reslab (fused, uint8 crops out)": ImageFolderDataset(
                tmp, reslab_transform(per_channel, IMAGENET_STD, to_float=False)),
            "torchvision ImageFolder + PIL": torchvision_dataset(tmp),
        }
        loaders = {name: make_loader(ds, a.workers, a.batch) for name, ds in runs.items()}
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(a.repeats):  # interleaved, so that machine noise hits all alike
            for name, loader in loaders.items():
                samples[name].append(images_per_s(loader, a.epochs))
        rates = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
        for name, r in rates.items():
            spread = ", ".join(f"{v:.0f}" for v in samples[name])
            print(f"  {name:34s} {r:7.1f} images/s  (median of {spread})")
        base = rates["torchvision ImageFolder + PIL"]
        for name in list(runs)[:3]:
            print(f"ratio {name} / torchvision+PIL: {rates[name] / base:.2f}")
    finally:
        if a.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
