"""Where the ImageNet recipe's image folder (Sec. 3.4: `ROOT/train/<class>/*`,
`ROOT/val/<class>/*`) is, from what `--data` names, and whether its photos suit the
recipe's sizes.

`--data` may name the folder itself, a folder holding exactly one such folder (an
archive's top folder, e.g. `imagenette-128/`, found as the CIFAR loader finds
`cifar-10-batches-py/`), or a `.tar` / `.tar.gz` / `.tgz` of either. An archive is
extracted once into `reslab_home()/cache/extract-<key>/`, the key hashing the archive's
absolute path, size, modification and change times and inode (as `reslab.data.folder`
keys its decoded caches), and reused by later runs; members are extracted with tarfile's
"data" filter (no absolute paths, no `..`, no links leading out, no devices). The run
records `--data` as given (the archive), so it resumes from the same extraction.

`check_source_size` warns once when the recipe's scale augmentation would enlarge every
training photo by much (the paper's shorter side in [256, 480] is sized for ImageNet's
~400-px photos, not for 128-px ones) and says which flags fit the photos.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from reslab.data.folder import source_key
from reslab.data.home import reslab_home
from reslab.errors import ReslabError

__all__ = ["check_source_size", "imagenet_root", "sized_flags", "source_side"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_SPLITS = ("train", "val")
EXTRACT_FORMAT = "reslab-extracted-archive-v1"


def _holds_splits(path: Path) -> bool:
    return any((path / s).is_dir() for s in _SPLITS)


def _folder_root(path: Path) -> Path | None:
    """`path` if it holds train/ or val/, else its single visible sub-folder if that does."""
    if _holds_splits(path):
        return path
    try:
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as e:
        raise ReslabError(f"cannot list {path}: {e.strerror}") from None
    if len(subdirs) == 1 and _holds_splits(subdirs[0]):
        return subdirs[0]
    return None


def _layout_error(what: str) -> ReslabError:
    return ReslabError(f"{what} is not an ImageNet-layout image folder: expected "
                       "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, with ROOT "
                       "the folder itself, its only sub-folder, or the top of a .tar/.tar.gz")


def _extract_safely(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract `tf` into `dest` with tarfile's "data" filter; on Pythons without it, only
    its regular files and folders, none named outside `dest`."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    for m in tf:  # pragma: no cover - Python < 3.10.12 / 3.11.4
        parts = Path(m.name).parts
        if Path(m.name).is_absolute() or ".." in parts or not (m.isfile() or m.isdir()):
            continue
        tf.extract(m, dest)


def extracted_folder(archive: Path, *, progress: bool = False) -> Path:
    """The folder `archive` (a tar, any compression) was extracted into, extracting it
    the first time (into a temporary folder, renamed into place when complete, so that a
    crash or a concurrent run never leaves a partial extraction in use)."""
    cache = reslab_home() / "cache"
    target = cache / f"extract-{source_key(archive, EXTRACT_FORMAT)}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=cache))
    try:
        if progress:
            print(f"extracting {archive} into {target} (once; later runs reuse it)", flush=True)
        with tarfile.open(archive) as tf:
            _extract_safely(tf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent run's extraction that won
                raise
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ReslabError(f"cannot extract {archive}: {e}") from None
    except OSError as e:
        raise ReslabError(f"cannot extract {archive} into {cache}: "
                          f"{e.strerror or e} (set RESLAB_HOME to a folder with room)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def imagenet_root(data: str | os.PathLike, *, progress: bool = False) -> str:
    """The folder holding `train/` (and `val/`) that `data` names (see the module's
    doc); ReslabError in one line if it names none."""
    path = Path(os.fspath(data)).expanduser()
    if path.is_dir():
        root = _folder_root(path)
        if root is None:
            raise _layout_error(str(path))
        return str(root)
    if not path.exists():
        raise ReslabError(f"{path} does not exist; --data of the ImageNet recipe is "
                          "an image folder (ROOT/train/<class>/*, ROOT/val/<class>/*) or a "
                          ".tar/.tar.gz of one")
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as e:
        raise ReslabError(f"cannot read {path}: {e.strerror or e}") from None
    if not is_tar:
        raise _layout_error(f"{path} (a file, not a .tar/.tar.gz archive)")
    root = _folder_root(extracted_folder(path, progress=progress))
    if root is None:
        raise _layout_error(f"the archive {path}")
    return str(root)


def source_side(paths: Sequence[str | os.PathLike], n: int = 64) -> int | None:
    """The median shorter side (pixels) of up to `n` of `paths` spread evenly over them,
    from the image headers alone (nothing is decoded); None if none can be read."""
    if not paths:
        return None
    step = max(1, len(paths) // n)
    sides = []
    for p in list(paths)[::step][:n]:
        try:
            with Image.open(p) as im:  # reads the header only
                sides.append(min(im.size))
        except Exception:  # an unreadable image is the loader's to report, not ours
            continue
    return int(statistics.median(sides)) if sides else None


def sized_flags(side: int) -> tuple[tuple[int, int], int, int]:
    """(scale, crop, test_resize) in Sec. 3.4's proportions for photos of shorter side
    `side` that are not enlarged much: shorter side in [side, 1.25 side], crop 0.875 side
    (a multiple of 8, 224/256 of the paper), test at shorter side `side`; 128 -> [128, 160],
    112, 128."""
    crop = max(8, 8 * round(0.875 * side / 8))
    return (side, max(side, round(1.25 * side))), min(crop, side), side


def check_source_size(paths: Sequence[str | os.PathLike], scale: Sequence[int], where: str,
                      *, enlarge: float = 1.25) -> int | None:
    """Warn (once) when the smallest shorter side of `scale` enlarges the median training
    photo of `paths` more than `enlarge` times, naming the flags that fit; returns the
    median shorter side (None if unknown)."""
    side = source_side(paths)
    if side is None or scale[0] <= enlarge * side:
        return side
    (lo, hi), crop, test = sized_flags(side)
    warnings.warn(
        f"the training images of {where} have a shorter side of about {side} px, but --scale "
        f"{scale[0]} {scale[1]} enlarges every one {scale[0] / side:.1f}-{scale[1] / side:.1f}x "
        "(the paper's sizes are for ImageNet's ~400-px photos; enlarging costs compute and "
        f"adds no detail): for photos of this size use --scale {lo} {hi} --crop {crop} "
        f"--test-resize {test}", stacklevel=2)
    return side
