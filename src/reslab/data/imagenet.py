"""The ImageNet input pipeline of Sec. 3.4 (He et al. 2015).

Training: the shorter side is resized to a length drawn uniformly from [256, 480]
(scale augmentation), a random 224x224 crop is taken of the image or its horizontal
flip, the per-pixel mean is subtracted, and AlexNet's PCA colour ("lighting") noise is
added. Testing: a 224x224 centre crop of the image resized to shorter side 256 (the
10-crop and multi-scale protocols live in `reslab.evaluate`).

Images are decoded by `reslab.data.decode` (torchvision.io, after a check of the header's
pixel count; 16-bit images scaled to 8 bits) to uint8 tensors; the geometric
transforms (resize, crop, flip) run on uint8 (less memory traffic, the uint8 antialiased
resize kernel) and only the 224x224 crop is converted to float.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from reslab.data.augment import Preprocess, per_channel_mean_std, per_pixel_mean
from reslab.data.decode import decode_image_file
from reslab.data.scan import class_folders, scan_split, vanished_error
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
        self,
        batch_shape: Sequence[int] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The RGB offsets (*batch_shape, 3) that `forward` would add, on `device`; alpha is
        drawn from `generator` (on its own device, then moved) or the global RNG."""
        where = generator.device if generator is not None else device
        alpha = torch.randn(*batch_shape, 3, device=where, dtype=dtype, generator=generator)
        alpha = alpha.to(device) * self.alphastd
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


def photometric(
    x: torch.Tensor,
    preprocess: Preprocess,
    lighting: Lighting | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The photometric half of Sec. 3.4's training transform, once per batch on the
    batch's device: uint8 -> float in [0, 1] -> PCA lighting (the "standard color
    augmentation", one RGB offset per image) -> per-pixel mean subtracted (`preprocess`,
    which also divides by its std, if any, and resizes a per-pixel mean to the input).

    `x`: uint8 (or float [0, 1]) (N, 3, H, W) or (3, H, W). The lighting offsets are drawn
    from `generator` (any device; the global RNG if None): seed it to reproduce a batch.
    """
    out = preprocess(x)  # a new float tensor
    if lighting is not None and lighting.alphastd:
        if out.shape[-3] != 3:
            raise ReslabError(f"PCA lighting needs RGB images, got {tuple(x.shape)}")
        rgb = lighting.noise(out.shape[:-3], out.device, out.dtype, generator)[..., None, None]
        std = preprocess.stats_for(x)[1]
        out.add_(rgb if std is None else rgb / std)  # (x + rgb - mean) / std
    return out


class Photometric:
    """`photometric` with a fixed `Preprocess` and `Lighting` as a transform (one image or
    a batch; lighting noise from the global RNG), e.g. the last step of
    `imagenet_train_transform`."""

    def __init__(self, preprocess: Preprocess, lighting: Lighting | None = None) -> None:
        self.preprocess, self.lighting = preprocess, lighting

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return photometric(x, self.preprocess, self.lighting)

    def __repr__(self) -> str:
        return f"Photometric({self.preprocess!r}, {self.lighting!r})"


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
    return v2.Compose([*geometric, imagenet_batch_transform(mean, std, lighting)])


def imagenet_batch_transform(
    mean: torch.Tensor | Sequence[float] = IMAGENET_MEAN,
    std: torch.Tensor | Sequence[float] | None = None,
    lighting: float = 0.1,
) -> Photometric:
    """The photometric half of the training transform (Sec. 3.4), for uint8 images or
    batches: float in [0, 1] -> PCA lighting (alphastd `lighting`, 0 disables) -> subtract
    mean [/ std]; see `photometric`."""
    return Photometric(Preprocess(mean, std), Lighting(lighting) if lighting else None)


def imagenet_eval_transform(
    mean: torch.Tensor | Sequence[float] | None = IMAGENET_MEAN,
    std: torch.Tensor | Sequence[float] | None = None,
    resize: int | None = 256,
    crop: int | None = 224,
    to_float: bool = True,
) -> v2.Compose:
    """Single-view testing (Sec. 3.4): shorter side `resize` -> centre crop -> float ->
    subtract mean [/ std] (`Preprocess`).

    `crop=None` keeps the whole resized image (for 10-crop / fully-convolutional tests);
    `mean=None` stops at float [0, 1]; `to_float=False` stops at uint8 (normalize whole
    batches on the device with `Preprocess` instead); `resize=None` keeps the original size.
    """
    steps: list[Callable] = []
    if resize is not None:
        steps.append(v2.Resize(resize, antialias=True))
    if crop is not None:
        steps.append(v2.CenterCrop(crop))
    if not to_float:
        return v2.Compose(steps)
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        steps.append(Preprocess(mean, std))
    return v2.Compose(steps)


class ImageFolderDataset(Dataset):
    """An ImageNet-layout folder split (`ROOT/train/<class>/*.JPEG`) decoded with
    `reslab.data.decode.decode_image_file` to uint8 RGB tensors (3, H, W), then `transform`.

    Items are `(image, label)`; `classes`, `class_to_idx`, `samples` (`(path, label)`
    tuples), `targets` and `loader` as in torchvision's ImageFolder. The folder is read by
    `reslab.data.scan.scan_split` (seconds for ImageNet's 1.28M images): a missing folder,
    a class folder without images, or an entry named like an image that is not a regular
    file (FIFO, broken link) raises ReslabError naming it. `classes` is the class list the
    split must have; by default a `val/` or `test/` beside a `train/` folder must have
    train's class folders (a label is its class's position in the sorted list, so one
    missing class would shift every label after it). Symbolic links are followed only inside
    the data set (the folder holding `train/`, `val/` for such a split; else `root`).

    A corrupt image, or one deleted since the scan, raises ReslabError naming it when
    loaded. With `skip_corrupt`, the scan skips non-files (with a warning) and such an
    image is replaced, with a warning, by the next readable image of the split (with that
    image's label), so that batches stay full: meant for training; evaluate without it, so
    that every image counts once.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        root = os.fspath(root)
        classes_of = "the training split"
        if classes is None:
            classes, classes_of = self._train_beside(root)
        parent, name = os.path.split(os.path.normpath(root))
        scan = scan_split(root, skip_corrupt=skip_corrupt, classes=classes, classes_of=classes_of,
                          data_root=parent if name in ("train", "val", "test") else root)
        self.root = root
        self.classes = scan.classes
        self.class_to_idx = {c: i for i, c in enumerate(scan.classes)}
        self.samples = scan.samples
        self.targets = [label for _, label in scan.samples]
        self.transform = transform
        self.target_transform = target_transform
        self.loader = decode_image_file
        self.skip_corrupt = skip_corrupt

    def restrict(self, classes: int | Sequence[str] | None = None,
                 per_class: int | None = None) -> ImageFolderDataset:
        """Keep only some classes (the first `classes` of the sorted names, ImageNet-100
        style, or these names) and the first `per_class` images of each (sorted paths);
        labels are renumbered 0..K-1. In place; returns self."""
        if isinstance(classes, int) and classes > len(self.classes):  # never fewer, silently
            raise ReslabError(f"--classes {classes}: {self.root} has only {len(self.classes)} "
                              "class folders")
        if classes is not None:
            keep = list(self.classes[:classes]) if isinstance(classes, int) else list(classes)
            missing = sorted(set(keep) - set(self.classes))
            if missing or not keep:
                raise ReslabError(f"{self.root} has no class folder {', '.join(missing[:3]) or '?'}"
                                  f" (it has {len(self.classes)} classes)")
            index = {c: i for i, c in enumerate(keep)}
            old = self.classes
            self.samples = [(p, index[old[t]]) for p, t in self.samples if old[t] in index]
            self.classes, self.class_to_idx = keep, index
        if per_class is not None:
            seen: dict[int, int] = {}
            kept = []
            for path, t in sorted(self.samples):
                if seen.get(t, 0) < per_class:
                    seen[t] = seen.get(t, 0) + 1
                    kept.append((path, t))
            self.samples = sorted(kept, key=lambda s: (s[1], s[0]))
        self.targets = [t for _, t in self.samples]
        return self

    @staticmethod
    def _train_beside(root: str) -> tuple[list[str] | None, str]:
        """The class folders of `train/` beside a `val/` or `test/` split, if any."""
        parent, name = os.path.split(os.path.normpath(root))
        train = os.path.join(parent, "train")
        if name in ("val", "test") and os.path.isdir(train):
            return class_folders(train), train
        return None, ""

    @property
    def imgs(self) -> list[tuple[str, int]]:
        return self.samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except ReslabError as e:
            if not self.skip_corrupt:
                if not os.path.lexists(path):  # deleted or moved since the scan
                    raise vanished_error(path, self.root) from None
                raise ReslabError(f"{e}; remove or replace the file") from None
            image, target = self._replacement(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def _replacement(self, index: int, tries: int = 64) -> tuple[torch.Tensor, int]:
        """The next readable image after the corrupt `index` (skip_corrupt), with its label."""
        bad = self.samples[index][0]
        warnings.warn(f"skipping unreadable image {bad}; the next readable image stands in "
                      "for it", stacklevel=3)
        n = len(self.samples)
        for k in range(1, min(n, tries)):
            path, target = self.samples[(index + k) % n]
            try:
                return self.loader(path), target
            except ReslabError:
                continue
        raise ReslabError(
            f"{bad} and the {min(n, tries) - 1} images after it cannot be decoded: is "
            f"{self.root} intact? Check its files or copy it again"
        )


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


def list_collate(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DataLoader `collate_fn` for `(image, label)` items of different sizes: (the list of
    images, a tensor of labels)."""
    return [b[0] for b in batch], torch.tensor([int(b[1]) for b in batch])


def _untransformed(ds: ImageFolderDataset) -> ImageFolderDataset:
    clone = ImageFolderDataset.__new__(ImageFolderDataset)
    clone.__dict__.update(ds.__dict__)
    clone.transform = None
    clone.transforms = None
    clone.target_transform = None
    return clone


def mean_sample(
    dataset: Dataset,
    n: int = 1000,
    seed: int = 0,
    resize: int | None = None,
    crop: int | None = None,
    workers: int = 0,
) -> Iterator[torch.Tensor]:
    """The decoded uint8 images (3, H, W) of `n` items of `dataset` drawn at random (from
    `seed`), resized to shorter side `resize` and centre-cropped to `crop` when given:
    the input of the mean estimators `per_pixel_mean` / `per_channel_mean_std`. An
    ImageFolderDataset's own transforms are bypassed; `workers` processes decode."""
    view = None
    if resize is not None or crop is not None:
        view = imagenet_eval_transform(resize=resize, crop=crop, to_float=False)
    if isinstance(dataset, ImageFolderDataset):
        dataset = _untransformed(dataset)
        dataset.transform, view = view, None  # resized in the workers
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[: max(0, min(n, len(dataset)))].tolist()
    loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=16,
                        num_workers=workers, collate_fn=list_collate)
    for images, _ in loader:
        for img in images:
            yield img if view is None else view(img)


def estimate_mean(
    dataset: Dataset,
    mode: str = "per-pixel",
    n: int = 1000,
    seed: int = 0,
    resize: int = 256,
    crop: int = 224,
    workers: int = 0,
) -> torch.Tensor:
    """The training mean from `n` random training images, in [0, 1] units: "per-pixel"
    (Sec. 3.4 "per-pixel mean subtracted"; (3, crop, crop) over their centre crops at
    shorter side `resize`, the test view; `Preprocess` resizes it to any other input) or
    "per-channel" ((3,) over all pixels of the whole images)."""
    if n < 1 or len(dataset) == 0:
        raise ReslabError("cannot estimate the mean of no images")
    if mode == "per-pixel":
        return per_pixel_mean(mean_sample(dataset, n, seed, resize, crop, workers))
    if mode == "per-channel":
        return per_channel_mean_std(mean_sample(dataset, n, seed, workers=workers))[0]
    raise ReslabError(f"mean must be per-pixel or per-channel, got {mode!r}")
