"""Where the trainer's batches come from: `TensorSource` for the CIFAR recipe (here) and
`FolderSource` for the ImageNet recipe (`reslab.train.folder_source`).

Both give the loop one interface: `batch(iteration) -> (x, y)` (model-ready, on the
engine's device, a pure function of (seed, iteration, rank)), `evaluate(model) -> [loss
sum, top-1 wrong, top-5 wrong, images]` over this rank's shard of the evaluation split,
`preprocess` (stored with checkpoints), `classes`, `name`, `eval_name`, `train_size`,
`eval_size`, `close()`. `make_source` picks the one of the recipe.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from reslab.data import (
    ImageData,
    Preprocess,
    load_image_data,
    per_channel_mean_std,
    per_pixel_mean,
    random_crop_flip,
)
from reslab.engine import Engine
from reslab.errors import ReslabError
from reslab.evaluate import error_sums
from reslab.train.distributed import World
from reslab.train.folder_source import FolderSource
from reslab.train.recipes import TrainConfig


class TensorSource:
    """Training batches from a split kept on the device as uint8 (Sec. 4.2, airbench style).

    Each epoch is a permutation seeded by (seed, epoch); batch `iteration` is a pure
    function of (seed, iteration), and in a world of W ranks each rank takes every W-th
    image of the global batch. Augmentation: mean subtracted, `pad`-pixel zero pad, random
    crop, random flip, on whole batches.
    """

    def __init__(self, data: ImageData, preprocess: Preprocess, cfg: TrainConfig,
                 engine: Engine, world: World) -> None:
        split = data.train
        eval_split = data.val if data.val is not None else data.test
        self.name, self.classes = data.name, list(data.classes)
        self.eval_name = "val" if data.val is not None else "test"
        self.train_size, self.eval_size = len(split), len(eval_split)
        self.batch_size, self.eval_batch_size = cfg.batch_size, cfg.eval_batch_size
        self.steps_per_epoch = len(split) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ReslabError(f"--batch-size {cfg.batch_size} is larger than the training set "
                              f"({len(split)} images)")
        if cfg.batch_size % world.size:
            raise ReslabError(f"--batch-size {cfg.batch_size} must divide by the {world.size} "
                              "ranks")
        self.fingerprint = _fingerprint(split.images, split.labels)
        device = engine.device
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        shard = slice(world.rank, None, world.size)
        self.eval_images = eval_split.images[shard].to(device)
        self.eval_labels = eval_split.labels[shard].to(device)
        self.preprocess, self.engine, self.seed, self.pad, self.world = (
            preprocess, engine, cfg.seed, cfg.pad, world)
        self._epoch, self._perm = -1, None
        self.generator = torch.Generator(device=device)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step = divmod(iteration, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.labels), generator=g).to(self.engine.device)
            self._epoch = epoch
        idx = self._perm[step * self.batch_size : (step + 1) * self.batch_size]
        idx = idx[self.world.rank :: self.world.size]
        x = self.preprocess(self.images[idx])
        self.generator.manual_seed((self.seed * 1_000_003 + iteration) * 64 + self.world.rank)
        return random_crop_flip(x, self.pad, generator=self.generator), self.labels[idx]

    def evaluate(self, model: nn.Module) -> list[float]:
        """[loss sum, top-1 wrong, top-5 wrong, images] on this rank's shard (single view)."""
        n, b = len(self.eval_labels), self.eval_batch_size
        batches = ((self.eval_images[i : i + b], self.eval_labels[i : i + b])
                   for i in range(0, n, b))
        return error_sums(model, batches, self.preprocess, self.engine)

    def close(self) -> None:
        pass


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A short hash of a split's pixels and labels: the data's identity for --resume."""
    h = hashlib.sha256()
    h.update(labels.cpu().numpy().tobytes())
    h.update(images.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_source(cfg: TrainConfig, engine: Engine, world: World, data: ImageData | None = None,
                preprocess: Preprocess | None = None) -> TensorSource | FolderSource:
    """The batch source of `cfg.recipe`. `data`: a pre-loaded CIFAR-recipe data set
    (experiments share one load); `preprocess`: a resumed run's (else the training mean)."""
    if cfg.recipe == "imagenet":
        return FolderSource(cfg, engine, world, preprocess.mean if preprocess else None)
    if data is None:
        data = load_image_data(cfg.data, root=cfg.data_root, val_split=cfg.val_split,
                               seed=cfg.seed, skip_corrupt=cfg.skip_corrupt,
                               progress=cfg.progress and world.is_main)
    if preprocess is None:  # the paper: per-pixel mean of the training images
        preprocess = Preprocess(per_channel_mean_std(data.train.images)[0]
                                if cfg.mean == "per-channel" else per_pixel_mean(data.train.images))
    return TensorSource(data, preprocess, cfg, engine, world)


def data_identity(source: TensorSource | FolderSource) -> dict:
    """What a run was trained on, recorded in checkpoints and compared on --resume."""
    identity = {"name": source.name, "classes": list(source.classes),
                "train": source.train_size, "eval": source.eval_size}
    if getattr(source, "fingerprint", None):
        identity["fingerprint"] = source.fingerprint
    return identity
