"""The ImageNet input pipeline of Sec. 3.4 (He et al. 2015).

Training: the shorter side is resized to a length drawn uniformly from [256, 480]
(scale augmentation), a random 224x224 crop is taken of the image or its horizontal
flip, the per-pixel mean is subtracted, and AlexNet's PCA colour ("lighting") noise is
added. Testing: a 224x224 centre crop of the image resized to shorter side 256 (the
10-crop and multi-scale protocols live in `reslab.evaluate`).

Images are decoded with `torchvision.io.decode_image` to uint8 tensors; the geometric
transforms (resize, crop, flip) run on uint8 (less memory traffic, the uint8 antialiased
resize kernel) and only the 224x224 crop is converted to float.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from reslab.errors import ReslabError

# AlexNet's (Krizhevsky et al. 2012) principal components of ImageNet RGB pixels, in [0, 1]
# units, as used by fb.resnet.torch (datasets/imagenet.lua) and most reproductions.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# Per-channel ImageNet statistics in [0, 1] units (the values torchvision's models use);
# a default only: the paper subtracts the per-pixel mean of its own training set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Lighting(nn.Module):
    """AlexNet-style PCA colour noise (Krizhevsky et al. 2012; Sec. 3.4 "standard colour
    augmentation"): adds `eigvec @ (alpha * eigval)` to every pixel of an image, with one
    alpha ~ N(0, alphastd^2) (3 values) drawn per image.

    Hand-written: torchvision has no PCA lighting transform. Works on float tensors in
    [0, 1] of shape (C, H, W) or (..., C, H, W) (a fresh alpha per leading index). Like
    fb.resnet.torch, the result is not clamped.
    """

    def __init__(
        self,
        alphastd: float = 0.1,
        eigval: Sequence[float] = IMAGENET_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC,
    ) -> None:
        super().__init__()
        self.alphastd = float(alphastd)
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32))
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32))

    def noise(
        self, batch_shape: Sequence[int] = (), device=None, dtype=torch.float32
    ) -> torch.Tensor:
        """The RGB offsets (*batch_shape, 3) that `forward` would add."""
        alpha = torch.randn(*batch_shape, 3, device=device, dtype=dtype) * self.alphastd
        eigval = self.eigval.to(device=device, dtype=dtype)
        eigvec = self.eigvec.to(device=device, dtype=dtype)
        return (alpha * eigval) @ eigvec.T  # row-wise eigvec @ (alpha * eigval)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() < 3 or img.shape[-3] != 3:
            raise ReslabError(f"Lighting needs RGB images (..., 3, H, W), got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ReslabError("Lighting needs float images in [0, 1]; convert with ToDtype first")
        if self.alphastd == 0:
            return img
        rgb = self.noise(img.shape[:-3], img.device, img.dtype)
        return img + rgb[..., :, None, None]

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


class RandomShorterSideResize(v2.RandomResize):
    """Scale augmentation (Sec. 3.4): resize so the shorter side is uniform in
    [scale[0], scale[1]] (both ends included), keeping the aspect ratio.

    This is exactly torchvision's `v2.RandomResize(min_size, max_size + 1)`: it draws
    `torch.randint(min, max)` (upper end excluded) and calls `resize(img, [size])`,
    which sets the shorter side to `size`. (`v2.RandomShortestSize` needs an explicit
    list of sizes and truncates the shorter side with `int(h * r)`, so it can land one
    pixel short.) Antialiased bilinear, which on uint8 tensors uses torch's fast kernel.
    """

    def __init__(
        self,
        scale: tuple[int, int] = (256, 480),
        interpolation=v2.InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        lo, hi = int(scale[0]), int(scale[1])
        if not 0 < lo <= hi:
            raise ReslabError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        super().__init__(lo, hi + 1, interpolation=interpolation, antialias=antialias)
        self.scale = (lo, hi)


def scale_crop(img: torch.Tensor, short: int, top: int, left: int, crop: int) -> torch.Tensor:
    """`crop(resize(img, [short]), top, left, crop, crop)` computed as crop-then-resize:
    the source box that the crop covers is cut out and resized to crop x crop, so only
    crop^2 output pixels are interpolated instead of the whole rescaled image. Equal to
    the resize-then-crop result up to rounding the box to whole source pixels (a shift
    or stretch of under one source pixel) and the filter's support at the box edges.
    """
    h, w = img.shape[-2:]
    s = short / min(h, w)
    size = max(1, round(crop / s))
    t = min(max(0, round(top / s)), max(0, h - size))
    lft = min(max(0, round(left / s)), max(0, w - size))
    return TF.resized_crop(img, t, lft, min(size, h), min(size, w), [crop, crop], antialias=True)


class RandomScaleCrop(v2.Transform):
    """Scale augmentation + random crop (Sec. 3.4) fused: the same distribution of crops
    as `RandomShorterSideResize(scale)` followed by `RandomCrop(crop)` (shorter side
    uniform in [scale], crop position uniform over the rescaled image), but computed by
    `scale_crop` (crop first, then resize only the crop): about 2x faster on ImageNet-size
    images. Use `fused=False` in `imagenet_train_transform` for the literal two steps.
    """

    def __init__(self, scale: tuple[int, int] = (256, 480), crop: int = 224) -> None:
        super().__init__()
        lo, hi = int(scale[0]), int(scale[1])
        if not 0 < lo <= hi or crop > lo:
            raise ReslabError(
                f"need 0 < min <= max and crop <= min, got scale={scale}, crop={crop}"
            )
        self.scale, self.crop = (lo, hi), int(crop)

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        short = int(torch.randint(self.scale[0], self.scale[1] + 1, ()))
        # the rescaled size exactly as torchvision's resize(img, [short]) computes it
        long = int(short * max(h, w) / min(h, w))
        rh, rw = (short, long) if h <= w else (long, short)
        top = int(torch.randint(0, rh - self.crop + 1, ()))
        left = int(torch.randint(0, rw - self.crop + 1, ()))
        return dict(short=short, top=top, left=left)

    def transform(self, inpt, params: dict):
        return scale_crop(inpt, params["short"], params["top"], params["left"], self.crop)


class Normalize(nn.Module):
    """Subtract the training mean (and divide by std) from float images in [0, 1].

    `mean` is per channel (C,) / (C, 1, 1) or per pixel (C, H, W) (the paper's choice,
    Sec. 3.4); a per-pixel mean is bilinearly resized to the input's size when they
    differ (e.g. 256x256 mean -> 224 crops, or whole images in multi-scale testing).
    Works on (C, H, W) and (N, C, H, W).
    """

    def __init__(
        self,
        mean: torch.Tensor | Sequence[float],
        std: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.dim() == 1:
            mean = mean.view(-1, 1, 1)
        if mean.dim() != 3:
            raise ReslabError(f"mean must be (C,), (C, 1, 1) or (C, H, W), got {tuple(mean.shape)}")
        self.register_buffer("mean", mean)
        if std is not None:
            std = torch.as_tensor(std, dtype=torch.float32)
            std = std.view(-1, 1, 1) if std.dim() <= 1 else std
        self.register_buffer("std", std)
        self._resized: dict[tuple, torch.Tensor] = {}

    def _mean_for(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean
        h, w = x.shape[-2:]
        if mean.shape[-2:] != (1, 1) and mean.shape[-2:] != (h, w):
            key = (h, w, x.device, x.dtype)
            if key not in self._resized:
                self._resized[key] = F.interpolate(
                    mean[None].to(x.device, torch.float32),
                    size=(h, w),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0].to(x.dtype)
            return self._resized[key]
        return mean.to(x.device, x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self._mean_for(x)
        if self.std is not None:
            x = x / self.std.to(x.device, x.dtype)
        return x

    def __getstate__(self):  # the resize cache is not worth pickling to workers
        state = self.__dict__.copy()
        state["_resized"] = {}
        return state


def imagenet_train_transform(
    mean: torch.Tensor | Sequence[float] = IMAGENET_MEAN,
    std: torch.Tensor | Sequence[float] | None = None,
    scale: tuple[int, int] = (256, 480),
    crop: int = 224,
    lighting: float = 0.1,
    to_float: bool = True,
    fused: bool = True,
) -> v2.Compose:
    """Training augmentation of Sec. 3.4, on a decoded uint8 (3, H, W) tensor.

    shorter side ~ U[scale] -> random crop x crop -> random horizontal flip -> float in
    [0, 1] -> PCA lighting (alphastd `lighting`, 0 disables) -> subtract mean [/ std].
    With `to_float=False` it stops after the flip and returns uint8 crops: then apply
    `imagenet_batch_transform` to whole batches on the training device (4x less data
    through the loader and host-to-device copy). `fused` (default) does the resize and
    the crop as one `RandomScaleCrop` (crop first, resize only the crop); `fused=False`
    runs `RandomShorterSideResize` then `v2.RandomCrop` literally.
    """
    if fused:
        geometric = [RandomScaleCrop(scale, crop), v2.RandomHorizontalFlip()]
    else:
        geometric = [RandomShorterSideResize(scale), v2.RandomCrop(crop), v2.RandomHorizontalFlip()]
    if not to_float:
        return v2.Compose(geometric)
    return v2.Compose(geometric + list(imagenet_batch_transform(mean, std, lighting).transforms))


def imagenet_batch_transform(
    mean: torch.Tensor | Sequence[float] = IMAGENET_MEAN,
    std: torch.Tensor | Sequence[float] | None = None,
    lighting: float = 0.1,
) -> v2.Compose:
    """The photometric half of the training transform, for uint8 images or batches:
    float in [0, 1] -> Lighting -> Normalize."""
    steps: list[Callable] = [v2.ToDtype(torch.float32, scale=True)]
    if lighting:
        steps.append(Lighting(lighting))
    steps.append(Normalize(mean, std))
    return v2.Compose(steps)


def imagenet_eval_transform(
    mean: torch.Tensor | Sequence[float] | None = IMAGENET_MEAN,
    std: torch.Tensor | Sequence[float] | None = None,
    resize: int | None = 256,
    crop: int | None = 224,
) -> v2.Compose:
    """Single-view testing: shorter side `resize` -> centre crop -> float -> normalize.

    `crop=None` keeps the whole resized image (for 10-crop / fully-convolutional tests);
    `mean=None` stops at float [0, 1]; `resize=None` keeps the original size.
    """
    steps: list[Callable] = []
    if resize is not None:
        steps.append(v2.Resize(resize, antialias=True))
    if crop is not None:
        steps.append(v2.CenterCrop(crop))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        steps.append(Normalize(mean, std))
    return v2.Compose(steps)


def decode_image_file(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W); ReslabError naming the file
    when it cannot be read or decoded."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as e:
        raise ReslabError(f"cannot decode image {path}: {e}; remove or replace the file") from e


class ImageFolderDataset(torchvision.datasets.ImageFolder):
    """An ImageNet-layout folder split (`ROOT/train/<class>/*.JPEG`) decoded with
    `torchvision.io.decode_image` to uint8 RGB tensors (3, H, W), then `transform`.

    Items are `(image, label)`; `classes`, `class_to_idx`, `samples` as in torchvision.
    A missing or empty folder, or a corrupt image, raises ReslabError naming the path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ReslabError(
                f"image folder {root} does not exist; expected "
                "ROOT/<split>/<class>/<image> (ImageNet layout)"
            )
        try:
            super().__init__(
                root,
                transform=transform,
                target_transform=target_transform,
                loader=decode_image_file,
            )
        except FileNotFoundError as e:
            raise ReslabError(f"no images in {root}: {e}") from e


class ShardSampler(Sampler[int]):
    """Every `world`-th index starting at `rank`, in order, without padding (so that
    summing per-rank counts gives exact validation errors, unlike DistributedSampler)."""

    def __init__(self, n: int, rank: int | None = None, world: int | None = None) -> None:
        if rank is None or world is None:
            import torch.distributed as dist

            rank = dist.get_rank() if rank is None else rank
            world = dist.get_world_size() if world is None else world
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def imagenet_loaders(
    root: str | os.PathLike,
    batch_size: int,
    workers: int,
    distributed: bool,
    seed: int = 0,
    mean: torch.Tensor | Sequence[float] | None = None,
    std: torch.Tensor | Sequence[float] | None = None,
    scale: tuple[int, int] = (256, 480),
    crop: int = 224,
    lighting: float = 0.1,
    val_resize: int = 256,
    val_batch_size: int | None = None,
    to_float: bool = True,
    mean_samples: int = 1000,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = 4,
) -> tuple[DataLoader, DataLoader]:
    """Train / val DataLoaders over `ROOT/train` and `ROOT/val` (Sec. 3.4 pipeline).

    `batch_size` is per process (the paper's 256 is the global batch: divide by the world
    size under DDP). With `distributed`, training uses `DistributedSampler(shuffle=True,
    seed=seed)` (call `train.sampler.set_epoch(epoch)` every epoch) and validation a
    `ShardSampler` (disjoint, unpadded shards: all-reduce the counts). `mean=None`
    estimates the per-pixel mean (224x224) from `mean_samples` training images
    (`pixel_mean`): compute it once, pass it in and store it with the checkpoint instead.
    With `to_float=False` the loaders never use the mean, so none is estimated.
    Train batches drop the last incomplete batch; workers are persistent; memory is
    pinned when CUDA is available.
    """
    root = os.fspath(root)
    train_set = ImageFolderDataset(os.path.join(root, "train"))
    val_set = ImageFolderDataset(os.path.join(root, "val"))
    if mean is None and to_float:
        mean = pixel_mean(
            train_set, n=mean_samples, seed=seed, size=val_resize, crop=crop, workers=workers
        )
    train_set.transform = imagenet_train_transform(mean, std, scale, crop, lighting, to_float)
    val_set.transform = imagenet_eval_transform(mean if to_float else None, std, val_resize, crop)
    if not to_float:  # uint8 val crops as well: the caller normalizes on device
        val_set.transform = v2.Compose([v2.Resize(val_resize, antialias=True), v2.CenterCrop(crop)])
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    common = dict(
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )
    rank = 0
    if distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
        train_sampler: Sampler | None = DistributedSampler(
            train_set, shuffle=True, seed=seed, drop_last=True
        )
        val_sampler: Sampler | None = ShardSampler(len(val_set))
    else:
        train_sampler = val_sampler = None
    # Seeds the workers' RNGs (augmentation) differently on every rank.
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=train_sampler,
        shuffle=train_sampler is None,
        drop_last=True,
        generator=gen,
        **common,
    )
    val = DataLoader(
        val_set,
        batch_size=val_batch_size or batch_size,
        sampler=val_sampler,
        shuffle=False,
        drop_last=False,
        **common,
    )
    return train, val


def _list_collate(batch):
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch])


def _raw_sample(dataset: Dataset, n: int, seed: int, workers: int):
    """Decoded uint8 images of a random sample of `n` items (transforms bypassed for
    ImageFolderDataset)."""
    if isinstance(dataset, ImageFolderDataset):
        dataset = _untransformed(dataset)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[: min(n, len(dataset))].tolist()
    sub = torch.utils.data.Subset(dataset, idx)
    return DataLoader(sub, batch_size=16, num_workers=workers, collate_fn=_list_collate)


def _untransformed(ds: ImageFolderDataset) -> ImageFolderDataset:
    clone = ImageFolderDataset.__new__(ImageFolderDataset)
    clone.__dict__.update(ds.__dict__)
    clone.transform = None
    clone.transforms = None
    clone.target_transform = None
    return clone


def channel_mean_std(
    dataset: Dataset, n: int = 1000, seed: int = 0, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (3,) in [0, 1] units over all pixels of `n` randomly
    chosen training images (at their original size)."""
    total = torch.zeros(3, dtype=torch.float64)
    sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _ in _raw_sample(dataset, n, seed, workers):
        for img in images:
            x = img.to(torch.float64).flatten(1) / 255
            total += x.sum(1)
            sq += (x * x).sum(1)
            count += x.shape[1]
    if count == 0:
        raise ReslabError("cannot estimate the mean of an empty dataset")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def pixel_mean(
    dataset: Dataset,
    n: int = 1000,
    seed: int = 0,
    size: int = 256,
    crop: int = 224,
    workers: int = 0,
) -> torch.Tensor:
    """Per-pixel mean image (3, crop, crop) in [0, 1] units (Sec. 3.4 "per-pixel mean
    subtracted"), over the centre crops of `n` random training images resized to shorter
    side `size`. `Normalize` resizes it to any other input size."""
    total = torch.zeros(3, crop, crop, dtype=torch.float64)
    count = 0
    for images, _ in _raw_sample(dataset, n, seed, workers):
        for img in images:
            x = TF.center_crop(TF.resize(img, [size], antialias=True), [crop])
            total += x.to(torch.float64) / 255
            count += 1
    if count == 0:
        raise ReslabError("cannot estimate the mean of an empty dataset")
    return (total / count).float()
