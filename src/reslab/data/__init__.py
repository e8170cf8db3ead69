"""Data sources -> `ImageData` of uint8 tensors; preprocessing and batched augmentation.

`load_image_data(spec)` accepts "cifar10", "cifar100", "synthetic[:N_TRAIN:N_TEST]" or a
PATH: an official-format CIFAR folder or .tar.gz, or an image folder
(`ROOT/train/<class>/*` + `ROOT/test|val/<class>/*`) as a directory or a .tar/.tar.gz.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from reslab.data.augment import Preprocess, per_channel_mean_std, per_pixel_mean, random_crop_flip
from reslab.data.cifar import (
    CIFAR_ARCHIVES,
    DATA_HINT,
    cifar_kind_of_names,
    load_cifar,
    read_cifar_archive,
    read_cifar_folder,
)
from reslab.data.dataset import ImageData, ImageSplit, split_validation
from reslab.data.folder import find_folder_root, load_image_folder, tar_looks_like_folder
from reslab.data.home import reslab_home
from reslab.data.synthetic import load_synthetic, parse_synthetic_spec
from reslab.errors import ReslabError

__all__ = [
    "CIFAR_ARCHIVES",
    "ImageData",
    "ImageSplit",
    "Preprocess",
    "load_cifar",
    "load_image_data",
    "load_image_folder",
    "load_synthetic",
    "per_channel_mean_std",
    "per_pixel_mean",
    "random_crop_flip",
    "reslab_home",
    "split_validation",
]

NAMED_DATA_SETS = ("cifar10", "cifar100", "synthetic")


def _load_path(path: Path, skip_corrupt: bool, progress: bool, test_only: bool) -> ImageData:
    """Detect what a PATH holds from its content and load it."""
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if cifar_kind_of_names(names) is not None:
            return read_cifar_folder(path, test_only)
        for info in CIFAR_ARCHIVES.values():
            sub = path / info["folder"]
            if sub.is_dir() and cifar_kind_of_names([p.name for p in sub.iterdir()]):
                return read_cifar_folder(sub, test_only)
        if find_folder_root(path) is not None:
            return load_image_folder(path, skip_corrupt=skip_corrupt, progress=progress,
                                     test_only=test_only)
        raise ReslabError(
            f"{path} is neither a CIFAR folder (data_batch_1..5, test_batch, batches.meta or "
            "train, test, meta) nor an image folder (train/<class>/*, test/<class>/*)"
        )
    if not tarfile.is_tarfile(path):
        raise ReslabError(f"{path} is not a folder or a .tar/.tar.gz archive; {DATA_HINT}")
    try:
        if tar_looks_like_folder(path):
            return load_image_folder(path, skip_corrupt=skip_corrupt, progress=progress,
                                     test_only=test_only)
    except tarfile.TarError as e:
        raise ReslabError(f"cannot read {path}: {e}") from None
    return read_cifar_archive(path, test_only)


def load_image_data(
    spec: str,
    *,
    root: str | Path | None = None,
    val_split: int = 0,
    seed: int = 0,
    skip_corrupt: bool = False,
    download: bool = True,
    progress: bool = True,
    splits: tuple[str, ...] = ("train", "test"),
) -> ImageData:
    """Load a data set by name or path (see module docstring) as uint8 tensors.

    `root`: where cifar10/cifar100 live (default `reslab_home()/data`).
    `val_split=K`: hold out K random training images (from `seed`) as `val`, as the
    paper's 45k/5k split (Sec. 4.2). `download`: fetch missing CIFAR archives.
    `skip_corrupt`: skip unreadable images in image folders with a warning.
    `splits=("test",)`: only the test split is wanted (evaluation); `train` is then empty.
    """
    unknown = set(splits) - {"train", "test"}
    if unknown or "test" not in splits:
        raise ReslabError(f"splits must be ('train', 'test') or ('test',), got {splits}")
    test_only = "train" not in splits
    name = spec.strip()
    key = name.lower()
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        data = load_cifar(key.replace("-", ""), root, download, progress, test_only)
    elif key == "synthetic" or key.startswith("synthetic:"):
        data = load_synthetic(**parse_synthetic_spec(name))
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ReslabError(
                f"unknown data {spec!r}: not one of {', '.join(NAMED_DATA_SETS)} and no such "
                f"file or folder; {DATA_HINT}"
            )
        data = _load_path(path, skip_corrupt, progress, test_only)
    if test_only:
        return data
    return split_validation(data, val_split, seed)
