"""Images/s of the ImageNet training input pipeline (Sec. 3.4 augmentation).

Synthetic mode (the default): builds a folder of ImageNet-size JPEGs (500x375, upscaled
CIFAR-10 images from ../shared/data/cifar10-jpeg75.tar.gz, or random images when it is
absent), then times, in the same run, with the same workers and batch size:

  reslab       ImageFolderDataset (torchvision.io.decode_image) + reslab's v2 transforms on
               uint8 tensors (shorter side U[256,480] -> crop 224 -> flip -> float ->
               PCA lighting -> mean): the default (resize and crop fused: crop the source
               box, resize only it), the literal resize-then-crop (`fused=False`), and
               `to_float=False` (uint8 crops; float/lighting/mean done later on the
               device, not timed here)
  torchvision  datasets.ImageFolder (PIL) + PIL transforms: Resize(random 256..480) ->
               RandomCrop(224) -> flip -> ToTensor -> Normalize (no lighting)

    python benchmarks/imagenet_loader.py [--images 400] [--workers 2] [--batch 32]

Folder mode (`--folder ROOT`, a real ImageNet-layout folder such as Imagenette's
imagenette-128/, or its .tar.gz): the recipe sized to the photos (default --scale 128
160 --crop 112), side by side in one run with the same workers and batch:

  loader    reslab's training batches as `reslab train --recipe imagenet` makes them
            (`FolderSource.batch`: seeded uint8 scale+crop+flip in the workers, then
            float, PCA lighting and per-pixel mean per batch on the device) vs the
            conventional torchvision.datasets.ImageFolder (PIL) + Resize(random
            shorter side) + RandomCrop + flip + ToTensor + Normalize + DataLoader
            (shuffled), both model-ready float batches on the device; images/s, ratio.
  training  ResNet-18 at that crop: reslab's trainer (`reslab.train.trainer.train`, the
            default path: precision auto, channels_last) vs the conventional loop over
            that DataLoader (fp32, NCHW, SGD 0.9, wd 1e-4); images/s of the training
            steps after a warm-up, and the ratio. The validation split is cut to a few
            images per class (evaluation is not timed, only made cheap).

    python benchmarks/imagenet_loader.py --folder /path/to/imagenette-128 [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from reslab.data.image_root import imagenet_root
from reslab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset
from reslab.data.imagenet import imagenet_train_transform as reslab_transform
from reslab.engine import cpu_info, make_engine, pick_device
from reslab.models import create_model
from reslab.train.distributed import World
from reslab.train.folder_source import FolderSource
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import train

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


def bench_folder(root: Path, tmp: Path, val_per_class: int) -> Path:
    """tmp/bench with train/ a link to root/train (all of it) and val/ a copy of the first
    `val_per_class` images of each class of root/val (evaluation made cheap, not timed)."""
    bench = tmp / "bench"
    bench.mkdir()
    (bench / "train").symlink_to((root / "train").resolve(), target_is_directory=True)
    for cls in sorted(p.name for p in (root / "val").iterdir() if p.is_dir()):
        (bench / "val" / cls).mkdir(parents=True)
        for f in sorted((root / "val" / cls).iterdir())[:val_per_class]:
            shutil.copy(f, bench / "val" / cls / f.name)
    return bench


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Conventional:
    """torchvision ImageFolder (PIL) + Resize(random shorter side) + RandomCrop + flip +
    ToTensor + Normalize, in a shuffled DataLoader that never ends (re-iterated)."""

    def __init__(self, train: Path, scale: tuple[int, int], crop: int, workers: int,
                 batch: int, device: torch.device) -> None:
        tf = T.Compose([PILRandomShorterSide(*scale), T.RandomCrop(crop),
                        T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.dataset = torchvision.datasets.ImageFolder(str(train), transform=tf)
        self.loader = DataLoader(self.dataset, batch_size=batch, shuffle=True,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 drop_last=True, prefetch_factor=4 if workers else None,
                                 pin_memory=device.type == "cuda")
        self.device, self._it = device, iter(self.loader)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x, y = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x, y = next(self._it)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def timed(fetch, batches: int, device: torch.device) -> float:
    """images/s of `batches` calls of `fetch` (each returning (x, y) on the device)."""
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = fetch()
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def conventional_training(conv: Conventional, classes: int, warm: int, iterations: int,
                          device: torch.device) -> float:
    """images/s of `iterations` SGD steps of ResNet-18 (fp32, NCHW) over the conventional
    loader, after `warm` untimed ones."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    n, t0 = 0, 0.0
    for i in range(warm + iterations):
        if i == warm:
            sync(device)
            n, t0 = 0, time.perf_counter()
        x, y = conv.batch()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += y.numel()
    sync(device)
    return n / (time.perf_counter() - t0)


def reslab_training(cfg: TrainConfig, warm: int, iterations: int) -> tuple[float, str]:
    """(images/s, precision) of reslab's trainer over `iterations` steps after `warm`
    ones: evaluations every `warm` steps split the run into intervals, each record's
    images/s covering its own (evaluation excluded); the first interval is the warm-up."""
    run = replace(cfg, iterations=warm + iterations, eval_every=warm, log_every=warm)
    train(run)
    out = Path(run.out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed_records = [r for r in records if "images_per_sec" in r and r["iteration"] > warm]
    images = warm * run.batch_size * len(timed_records)
    seconds = sum(warm * run.batch_size / r["images_per_sec"] for r in timed_records)
    return images / seconds, json.loads((out / "run.json").read_text())["precision"]


def folder_mode(a: argparse.Namespace) -> None:
    """The real-folder benchmark (the module's doc, "Folder mode")."""
    root = Path(imagenet_root(a.folder, progress=True))
    scale, crop = (a.scale[0], a.scale[1]), a.crop
    test_resize = a.test_resize or scale[0]
    batches = a.batches or (15 if a.quick else 80)
    repeats = 1 if a.quick else a.repeats
    warm = a.warm or (3 if a.quick else 10)
    iterations = a.train_iterations or (4 * warm if a.quick else 6 * warm)
    iterations = max(warm, iterations // warm * warm)  # whole intervals of `warm` steps
    device = pick_device(a.device)
    cpu = cpu_info()
    print(f"machine: {cpu['cpu']} ({os.cpu_count()} CPUs; flags "
          f"{' '.join(cpu['flags']) or 'none'}; native bf16: {cpu['native_bf16']}); "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}")
    with tempfile.TemporaryDirectory(prefix="reslab-folder-bench-") as tmp:
        bench = bench_folder(root, Path(tmp), a.val_per_class)
        cfg = TrainConfig.imagenet(model="resnet18", data=str(bench), scale=scale, crop=crop,
                                   test_resize=test_resize, batch_size=a.batch,
                                   workers=a.workers, device=a.device, progress=False,
                                   tensorboard=False, out=str(Path(tmp) / "run"))
        conv = Conventional(bench / "train", scale, crop, a.workers, a.batch, device)
        print(f"data: {root} ({len(conv.dataset)} training images, "
              f"{len(conv.dataset.classes)} classes); shorter side in [{scale[0]}, "
              f"{scale[1]}], crop {crop}; batch {a.batch}, workers {a.workers}")
        source = FolderSource(cfg, make_engine(a.device, "auto"), World())
        it = 0

        def reslab_batch() -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal it
            it += 1
            return source.batch(it - 1)

        try:
            timed(reslab_batch, 3, device)  # warm-up: starts the workers
            timed(conv.batch, 3, device)
            samples: dict[str, list[float]] = {"reslab": [], "conventional": []}
            for _ in range(repeats):  # interleaved, so that machine noise hits both alike
                samples["reslab"].append(timed(reslab_batch, batches, device))
                samples["conventional"].append(timed(conv.batch, batches, device))
        finally:
            source.close()
        rate = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
        print(f"loader   reslab (FolderSource.batch)        {rate['reslab']:8.1f} images/s")
        print(f"loader   conventional (ImageFolder + PIL)   {rate['conventional']:8.1f} "
              f"images/s  ({batches} batches, median of {repeats})")
        print(f"loader   ratio reslab / conventional: {rate['reslab'] / rate['conventional']:.2f}")
        conv_train = conventional_training(conv, len(conv.dataset.classes), warm, iterations,
                                           device)
        del conv
        ours, precision = reslab_training(cfg, warm, iterations)
        print(f"training ResNet-18 at crop {crop}: reslab trainer {ours:8.1f} images/s "
              f"({precision}, channels_last); conventional loop {conv_train:8.1f} images/s "
              f"(fp32, NCHW); ratio {ours / conv_train:.2f} ({iterations} timed iterations "
              f"after {warm})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="passes over the folder per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per pipeline (median shown)")
    p.add_argument("--dir", type=Path, default=None, help="reuse/keep the JPEG folder here")
    f = p.add_argument_group("folder mode")
    f.add_argument("--folder", "--data", dest="folder", default=None,
                   help="a real ImageNet-layout folder (ROOT/train, ROOT/val) or its .tar.gz, "
                   "e.g. imagenette-128: time the sized recipe on its photos")
    f.add_argument("--scale", type=int, nargs=2, default=(128, 160), metavar=("MIN", "MAX"))
    f.add_argument("--crop", type=int, default=112)
    f.add_argument("--test-resize", type=int, default=None, help="default: --scale MIN")
    f.add_argument("--batches", type=int, default=None,
                   help="batches per loader timing (default 80; 15 with --quick)")
    f.add_argument("--warm", type=int, default=None,
                   help="untimed training iterations first (default 10; 3 with --quick)")
    f.add_argument("--train-iterations", type=int, default=None,
                   help="timed training iterations (default 6x --warm; 4x with --quick)")
    f.add_argument("--val-per-class", type=int, default=5,
                   help="validation images per class kept (evaluation is not timed)")
    f.add_argument("--device", default="auto")
    f.add_argument("--quick", action="store_true",
                   help="one short timing of each (a couple of minutes)")
    a = p.parse_args()
    if a.folder is not None:
        folder_mode(a)
        return
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
