"""`FolderSource`: the ImageNet recipe's batches (Sec. 3.4) from an image folder
(`ROOT/train/<class>/*`, `ROOT/val/<class>/*`; `--data` may also name a folder holding ROOT
or a .tar/.tar.gz of it: `reslab.data.image_root`).

One DataLoader serves the whole run. Its sampler (`EpochSampler`) walks the epochs itself
and starts at any iteration, so a resumed run reads no skipped image; it hands each image
a seed that depends only on (seed, iteration, slot in the global batch), and the workers
draw that image's geometric augmentation (shorter side in [256, 480], 224 crop, flip, on
uint8) from it. The device then does the photometric steps once per batch (`photometric`:
float, PCA lighting seeded by (seed, iteration, rank), per-pixel mean). Batch `iteration`
is thus the same whatever the worker count and wherever the run started. Evaluation: the
centre crop of shorter side 256 of this rank's shard of `ROOT/val`, through `error_sums`.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from reslab.data.augment import Preprocess
from reslab.data.image_root import check_source_size, imagenet_root
from reslab.data.imagenet import (
    ImageFolderDataset,
    Lighting,
    ShardSampler,
    estimate_mean,
    imagenet_eval_transform,
    imagenet_train_transform,
    photometric,
)
from reslab.engine import Engine
from reslab.errors import ReslabError
from reslab.evaluate import error_sums
from reslab.train.distributed import World
from reslab.train.recipes import TrainConfig

#: Training images the per-pixel (or per-channel) mean is estimated from when a run starts.
MEAN_SAMPLES = 1000

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix64 chained over them): nearby tuples
    give unrelated seeds."""
    h = 0
    for v in values:
        z = (h + (int(v) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """The training order of a whole run, endless, from iteration `start` on.

    Epoch e is a permutation of the `n` images seeded by (seed, e); rank r of W takes every
    W-th image of its first (n // W) * W (as `DistributedSampler(drop_last=True)`), in
    batches of `batch_size` (per rank), so global batch k is images k*B .. (k+1)*B - 1 of
    the permutation (B = W * batch_size), the batch `TensorSource` takes. Yields (image
    index, sample seed); the seed is `mix_seed(seed, iteration, slot)` with slot the
    image's place in the global batch, so augmentation depends on nothing else. Set
    `start` before each `iter()`.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.steps_per_epoch = (n // world_size) // batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self._walk(self.start)

    def _walk(self, iteration: int) -> Iterator[tuple[int, int]]:
        b, w = self.batch_size, self.world_size
        if self.steps_per_epoch < 1:
            return
        shard_epoch, shard = -1, []
        while True:
            epoch, step = divmod(iteration, self.steps_per_epoch)
            if epoch != shard_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g)
                shard, shard_epoch = perm[self.rank : (self.n // w) * w : w].tolist(), epoch
            for j, index in enumerate(shard[step * b : (step + 1) * b]):
                yield index, mix_seed(self.seed, iteration, self.rank + w * j)
            iteration += 1


class SeededTransform(Dataset):
    """Items `(index, sample seed)` -> `(transform(image), label)` of `dataset`, the
    transform's random draws (torch's global CPU RNG) seeded with the sample seed; the RNG
    state is restored after, so a loader without workers leaves the caller's RNG alone.

    Only the CPU generator is seeded (`torch.default_generator.manual_seed`, the stream
    `torch.manual_seed` gives it): the transforms draw on the CPU, and `torch.manual_seed`
    also seeds every accelerator backend, ~0.1 ms an image, a sixth of a 128-px photo's
    whole cost on a CPU."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]
                 ) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image, label = self.dataset[index]
        rng = torch.default_generator
        state = rng.get_state()
        rng.manual_seed(seed)
        try:
            image = self.transform(image)
        finally:
            rng.set_state(state)
        return image, label


def _folder_options(skip_corrupt: bool) -> dict[str, Any]:
    """`skip_corrupt` for ImageFolderDataset, where its constructor takes it."""
    if "skip_corrupt" in inspect.signature(ImageFolderDataset.__init__).parameters:
        return {"skip_corrupt": skip_corrupt}
    return {}


def _fingerprint(root: str, samples: list[tuple[str, int]]) -> str:
    """A short hash of the training file list (paths relative to `root`, labels)."""
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
    return h.hexdigest()[:16]


def _shutdown(loader: DataLoader) -> None:
    """Stop a DataLoader's persistent workers, if it started any."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


class FolderSource:
    """Training batches and evaluation of the ImageNet recipe (Sec. 3.4) from `cfg.data`
    (`ROOT/train/<class>/*`, `ROOT/val/<class>/*`), this rank's share of them.

    `batch(iteration)` -> (x, y) on `engine.device`: x float, shorter side in `cfg.scale`,
    random `cfg.crop` crop, flip, PCA lighting (`cfg.lighting`), mean subtracted; a pure
    function of (cfg.seed, iteration, rank). `evaluate(model)` -> [loss sum, top-1 wrong,
    top-5 wrong, images] over this rank's shard of `ROOT/val` (centre `cfg.crop` crop of
    shorter side `cfg.test_resize`). `mean`: a resumed run's; None estimates `cfg.mean`
    ("per-pixel", the paper's, or "per-channel") from `MEAN_SAMPLES` training images.
    """

    def __init__(self, cfg: TrainConfig, engine: Engine, world: World,
                 mean: torch.Tensor | None = None) -> None:
        if cfg.scale is None or cfg.crop is None or cfg.test_resize is None:
            raise ReslabError("an image folder is trained with --recipe imagenet")
        if cfg.batch_size % world.size:
            raise ReslabError(f"--batch-size {cfg.batch_size} must divide by the {world.size} "
                              "ranks")
        # the folder, its only sub-folder, or an archive's extraction (`imagenet_root`)
        root = imagenet_root(cfg.data, progress=cfg.progress and world.is_main)
        # skip_corrupt for training only: every validation image must count once
        train = ImageFolderDataset(os.path.join(root, "train"),
                                   **_folder_options(cfg.skip_corrupt))
        train.restrict(cfg.classes, cfg.images_per_class)  # --classes, --images-per-class
        if world.is_main:  # 128-px photos at the paper's [256, 480]: say which flags fit
            check_source_size([p for p, _ in train.samples], cfg.scale, cfg.data)
        val = ImageFolderDataset(
            os.path.join(root, "val"),
            transform=imagenet_eval_transform(resize=cfg.test_resize, crop=cfg.crop,
                                              to_float=False)).restrict(cfg.classes)
        if list(val.classes) != list(train.classes):
            raise ReslabError(f"{root}/val and {root}/train have different class folders "
                              f"({len(val.classes)} and {len(train.classes)}); give them the "
                              "same class names")
        self.name, self.classes, self.eval_name = cfg.data, list(train.classes), "val"
        self.train_size, self.eval_size = len(train), len(val)
        self.fingerprint = _fingerprint(os.path.join(root, "train"), train.samples)
        per_rank = cfg.batch_size // world.size
        self.sampler = EpochSampler(len(train), per_rank, cfg.seed, world.rank, world.size)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if self.steps_per_epoch < 1:
            raise ReslabError(f"--batch-size {cfg.batch_size} is larger than the training set "
                              f"({len(train)} images)")
        if mean is None:
            mean = estimate_mean(train, cfg.mean, MEAN_SAMPLES, cfg.seed, cfg.test_resize,
                                 cfg.crop, cfg.workers)
        self.preprocess = Preprocess(mean)
        self.lighting = Lighting(cfg.lighting).to(engine.device) if cfg.lighting else None
        self.engine, self.seed, self.world = engine, cfg.seed, world
        common: dict[str, Any] = dict(
            num_workers=cfg.workers, pin_memory=engine.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            prefetch_factor=4 if cfg.workers > 0 else None)
        geometric = imagenet_train_transform(scale=cfg.scale, crop=cfg.crop, to_float=False)
        # The loader's own generator only seeds its workers' RNGs, which are reseeded per
        # image; a fixed one keeps iter() from drawing from the global RNG.
        self.loader = DataLoader(
            SeededTransform(train, geometric), batch_size=per_rank, sampler=self.sampler,
            drop_last=True, generator=torch.Generator().manual_seed(cfg.seed), **common)
        self.val_loader = DataLoader(
            val, batch_size=cfg.eval_batch_size,
            sampler=ShardSampler(len(val), world.rank, world.size), **common)
        self._generator = torch.Generator()
        self._iter: Iterator | None = None
        self._next = -1

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model-ready training batch `iteration` of this rank (Sec. 3.4)."""
        if self._iter is None or iteration != self._next:  # first batch, or a jump
            self.sampler.start = iteration
            self._iter = iter(self.loader)
        x, y = next(self._iter)
        self._next = iteration + 1
        device = self.engine.device
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        self._generator.manual_seed(mix_seed(self.seed, iteration, self.world.rank))
        return photometric(x, self.preprocess, self.lighting, self._generator), y

    def evaluate(self, model: nn.Module) -> list[float]:
        """[loss sum, top-1 wrong, top-5 wrong, images] of this rank's val shard (shorter
        side `test_resize`, centre crop; 10-crop and multi-scale are `reslab eval`'s)."""
        return error_sums(model, self.val_loader, self.preprocess, self.engine)

    def close(self) -> None:
        """Stop the loaders' workers."""
        self._iter = None
        for loader in (self.loader, self.val_loader):
            _shutdown(loader)
