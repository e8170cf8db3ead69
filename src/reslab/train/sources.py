"""Where the trainer's batches come from, one class per kind of data.

`TensorSource` (CIFAR recipe, Sec. 4.2): the whole split kept on the device as uint8,
augmented per batch with tensor ops (airbench style). `FolderSource` (ImageNet recipe,
Sec. 3.4): an image folder decoded and augmented in DataLoader workers with torchvision,
photometric steps per batch on the device. Both give the loop the same interface:
`batch(iteration) -> (x, y)`, `evaluate(model, ...) -> [loss sum, top1 wrong, top5 wrong,
n]` over this rank's shard, `preprocess` (stored with checkpoints), `classes`, `name`.
"""

from __future__ import annotations

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.evaluate import accumulate_errors
from reslab.train.distributed import World


class TensorSource:
    """Training batches from a split kept on the device as uint8.

    Each epoch is a permutation seeded by (seed, epoch); batch `iteration` is a pure
    function of (seed, iteration), and in a world of W ranks each rank takes every W-th
    image of the global batch. Augmentation: mean subtracted, `pad`-pixel zero pad, random
    crop, random flip, on whole batches (Sec. 4.2).
    """

    def __init__(self, data, preprocess, batch_size: int, device: torch.device, seed: int,
                 pad: int, world: World) -> None:
        split = data.train
        self.name, self.classes = data.name, list(data.classes)
        eval_split = data.val if data.val is not None else data.test
        self.eval_name = "val" if data.val is not None else "test"
        self.train_size, self.eval_size = len(split), len(eval_split)
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        shard = slice(world.rank, None, world.size)
        self.eval_images = eval_split.images[shard].to(device)
        self.eval_labels = eval_split.labels[shard].to(device)
        self.batch_size = batch_size
        self.steps_per_epoch = len(split) // batch_size
        if self.steps_per_epoch < 1:
            raise ReslabError(
                f"--batch-size {batch_size} is larger than the training set ({len(split)} images)"
            )
        if batch_size % world.size:
            raise ReslabError(f"--batch-size {batch_size} must divide by the {world.size} ranks")
        self.preprocess, self.device, self.seed, self.pad, self.world = (
            preprocess, device, seed, pad, world)
        self._epoch, self._perm = -1, None
        self.generator = torch.Generator(device=device)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        from reslab.data.augment import random_crop_flip

        epoch, step = divmod(iteration, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.labels), generator=g).to(self.device)
            self._epoch = epoch
        idx = self._perm[step * self.batch_size : (step + 1) * self.batch_size]
        idx = idx[self.world.rank :: self.world.size]
        x = self.preprocess(self.images[idx])
        self.generator.manual_seed((self.seed * 1_000_003 + iteration) * 64 + self.world.rank)
        return random_crop_flip(x, self.pad, generator=self.generator), self.labels[idx]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int, run_model) -> list[float]:
        """[loss sum, top-1 wrong, top-5 wrong, images] on this rank's shard (single view)."""
        sums = [0.0, 0.0, 0.0, 0.0]
        for i in range(0, len(self.eval_labels), batch_size):
            x = self.preprocess(self.eval_images[i : i + batch_size])
            y = self.eval_labels[i : i + batch_size]
            accumulate_errors(sums, run_model(model, x).float(), y)
        return sums

    def close(self) -> None:
        pass


class _SkipSampler(torch.utils.data.Sampler):
    """Drops the first `skip` indices of `sampler` once (resuming mid-epoch)."""

    def __init__(self, sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        it = iter(self.sampler)
        skip, self.skip = self.skip, 0
        for i, idx in enumerate(it):
            if i >= skip:
                yield idx

    def __len__(self) -> int:
        return len(self.sampler) - self.skip

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class FolderSource:
    """ImageNet-layout folder (`ROOT/train/<class>/*`, `ROOT/val/<class>/*`), Sec. 3.4.

    Workers decode with torchvision and do the geometric augmentation (shorter side in
    [256, 480], random 224 crop, flip) on uint8; the device does float conversion, PCA
    lighting and mean subtraction per batch. Evaluation: shorter side 256, centre crop.
    """

    def __init__(self, root: str, batch_size: int, device: torch.device, seed: int,
                 world: World, workers: int, mean: torch.Tensor | None,
                 mean_mode: str = "per-pixel", recipe=None) -> None:
        from torch.utils.data import DistributedSampler, RandomSampler

        from reslab.data.augment import Preprocess
        from reslab.data.imagenet import (
            Lighting,
            channel_mean_std,
            imagenet_loaders,
            pixel_mean,
        )
        from reslab.train.imagenet_recipe import IMAGENET_RECIPE

        recipe = recipe or IMAGENET_RECIPE
        if batch_size % world.size:
            raise ReslabError(f"--batch-size {batch_size} must divide by the {world.size} ranks")
        self.train_loader, self.val_loader = imagenet_loaders(
            root, batch_size // world.size, workers, world.distributed, seed, mean=mean,
            scale=recipe.scale, crop=recipe.crop, val_resize=recipe.test_resize,
            to_float=False,
        )
        ds = self.train_loader.dataset
        if mean is None:  # per-pixel (the paper) or per-channel, from a training sample
            if mean_mode == "per-channel":
                mean = channel_mean_std(ds, n=1000, seed=seed)[0]
            else:
                mean = pixel_mean(ds, n=1000, seed=seed, size=recipe.test_resize,
                                  crop=recipe.crop)
        self.preprocess = Preprocess(mean)
        self.lighting = Lighting(recipe.lighting_alphastd)
        self.name, self.classes = root, list(ds.classes)
        self.eval_name = "val"
        self.train_size, self.eval_size = len(ds), len(self.val_loader.dataset)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch < 1:
            raise ReslabError(f"--batch-size {batch_size} is larger than the training set")
        sampler = self.train_loader.sampler
        self._base_sampler = sampler if isinstance(sampler, DistributedSampler) else None
        if self._base_sampler is None:
            assert isinstance(sampler, RandomSampler)
        self.device, self.seed, self.world = device, seed, world
        self._iter, self._epoch = None, -1

    def _start_epoch(self, epoch: int, skip_batches: int) -> None:
        from torch.utils.data import DataLoader

        loader = self.train_loader
        if self._base_sampler is not None:
            self._base_sampler.set_epoch(epoch)
            sampler = self._base_sampler
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            sampler = torch.utils.data.RandomSampler(loader.dataset, generator=g)
        per_rank = loader.batch_size
        if skip_batches:
            sampler = _SkipSampler(sampler, skip_batches * per_rank)
        torch.manual_seed(self.seed * 1_000_003 + epoch * 64 + self.world.rank)
        self._loader = DataLoader(
            loader.dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
            num_workers=loader.num_workers, pin_memory=loader.pin_memory,
            persistent_workers=False,
        )
        self._iter = iter(self._loader)
        self._epoch = epoch

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step = divmod(iteration, self.steps_per_epoch)
        if epoch != self._epoch:
            self._start_epoch(epoch, step)
        try:
            x, y = next(self._iter)
        except StopIteration:  # a shorter epoch on this rank: start the next one
            self._start_epoch(epoch + 1, 0)
            x, y = next(self._iter)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        # PCA lighting adds one RGB offset per image; with no std division it commutes
        # with the mean subtraction, so it is added after it.
        x = self.preprocess(x)
        if self.lighting.alphastd:
            x = x + self.lighting.noise((len(x),), x.device)[:, :, None, None]
        return x, y

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int, run_model) -> list[float]:
        """[loss sum, top-1 wrong, top-5 wrong, images] of this rank's val shard
        (shorter side 256, centre 224 crop; 10-crop and multi-scale are `reslab eval`'s)."""
        sums = [0.0, 0.0, 0.0, 0.0]
        for x, y in self.val_loader:
            x = self.preprocess(x.to(self.device))
            accumulate_errors(sums, run_model(model, x).float(), y.to(self.device))
        return sums

    def close(self) -> None:
        self._iter = None
