"""Image folders (`ROOT/train/<class>/*`, `ROOT/test/<class>/*` or `ROOT/val/<class>/*`),
as a directory or a `.tar` / `.tar.gz` / `.tgz` of one, possibly under one top folder.

Every image is decoded once (`reslab.data.decode`: RGB, 16-bit images scaled to 8 bits,
images over the pixel limit refused before decoding) into a uint8 tensor and the result is
cached in `reslab_home()/cache/<key>.pt`, the key hashing the source's absolute path,
size, modification and change times and inode (of every file, for a directory; and the
pixel limit), so a second run reads one file instead of decoding again, and a file
rewritten with its modification time set back (`cp -p`) is decoded again. Images are
kept at their size (CIFAR-like folders, Sec. 4.2): all images must share one size.

Directories are scanned by `reslab.data.scan` (as ImageNet folders are): files named
like images that are not regular files (FIFOs, broken links, ...) are never opened, a
class folder without images is an error, every split must have train/'s classes, and
symbolic links leading outside the folder are skipped with a warning.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reslab.atomic_write import atomic_torch_save
from reslab.data.dataset import ImageData, ImageSplit
from reslab.data.decode import decode_image_bytes, max_image_pixels
from reslab.data.home import reslab_home
from reslab.data.scan import (
    IMAGE_EXTENSIONS,
    SKIP_HINT,
    check_same_classes,
    empty_classes_error,
    is_image_name,
    read_regular_file,
    scan_split,
    vanished_error,
)
from reslab.errors import ReslabError

__all__ = ["IMAGE_EXTENSIONS", "find_folder_root", "load_image_folder", "tar_looks_like_folder"]

SPLITS = ("train", "test", "val")
CACHE_FORMAT = "reslab-image-cache-v2"  # v1 wrapped 16-bit images modulo 256

# (class, file name shown to the user, source: Path or bytes)
_Item = tuple[str, str, "Path | bytes"]


@dataclass
class _Listing:
    """What a source holds before decoding: per split, its classes and images, and the
    entries skipped (with skip_corrupt) as not regular files."""

    classes: dict[str, list[str]] = field(default_factory=dict)
    items: dict[str, list[_Item]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _decode(data: bytes, name: str) -> torch.Tensor:
    """Decode one image file's bytes to uint8 RGB (3, H, W); ReslabError naming `name`."""
    return decode_image_bytes(data, name)


def _is_image(name: str) -> bool:
    return is_image_name(name.rpartition("/")[2])


def _split_rel(parts: list[str]) -> list[str] | None:
    """`[split, class, ..., file]` from a member's path parts, with at most one top folder."""
    if len(parts) >= 3 and parts[0] in SPLITS:
        return parts
    if len(parts) >= 4 and parts[1] in SPLITS:
        return parts[1:]
    return None


def find_folder_root(path: Path) -> Path | None:
    """The directory holding `train/` (path itself or its single sub-folder), or None."""
    if (path / "train").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    return None


def _dir_listing(root: Path, skip_corrupt: bool) -> _Listing:
    listing = _Listing()
    for split in SPLITS:
        sdir = root / split
        if not sdir.is_dir():
            continue
        scan = scan_split(sdir, skip_corrupt=skip_corrupt, data_root=root)
        listing.classes[split] = scan.classes
        listing.items[split] = [(scan.classes[i], p, Path(p)) for p, i in scan.samples]
        listing.skipped += scan.skipped
    return listing


def _tar_listing(archive: Path, skip_corrupt: bool) -> _Listing:
    """Images of a tar, under at most one top folder, read into memory. Image members
    that are not regular files (nor links to one in the archive) are errors or, with
    `skip_corrupt`, skipped; class folders stored as empty directories are errors."""
    prefix: str | None = None
    listing = _Listing(items={s: [] for s in SPLITS})
    dirs: set[tuple[str, str, str]] = set()  # (top, split, class) of directory members
    problems: list[str] = []
    with tarfile.open(archive) as tf:
        for m in tf:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.isdir():
                if len(parts) in (2, 3) and parts[-2] in SPLITS and parts[-1][0] != ".":
                    dirs.add(("/".join(parts[:-2]), parts[-2], parts[-1]))
                continue
            if not _is_image(m.name):
                continue
            rel = _split_rel(parts)
            if rel is None or rel[1].startswith("."):  # hidden folders, as in directories
                continue
            top = "/".join(parts[: len(parts) - len(rel)])
            if prefix is None:
                prefix = top
            elif top != prefix:
                continue
            try:
                f = tf.extractfile(m) if m.isfile() or m.issym() or m.islnk() else None
            except KeyError:  # a link to a member the archive lacks
                f = None
            if f is None:
                problems.append(f"{archive}:{m.name}")
                continue
            listing.items[rel[0]].append((rel[1], f"{archive}:{m.name}", f.read()))
    if problems and not skip_corrupt:
        more = f" ({len(problems)} such members in all)" if len(problems) > 1 else ""
        raise ReslabError(f"{problems[0]} is not a regular file{more}; {SKIP_HINT}")
    if problems:
        warnings.warn(f"skipping {len(problems)} archive members named like images that are "
                      f"not regular files: {', '.join(problems[:3])}", stacklevel=2)
    listing.skipped = problems
    for split in SPLITS:
        named = {c for t, s, c in dirs if s == split and t == (prefix or "")}
        found = {c for c, _, _ in listing.items[split]}
        if named - found:
            raise empty_classes_error(f"{archive}:{split}", sorted(named - found))
        if found:
            listing.classes[split] = sorted(found)
    return listing


def tar_looks_like_folder(archive: Path, max_members: int = 2000) -> bool:
    """Whether a tar holds an image folder (judged from its first image members)."""
    with tarfile.open(archive) as tf:
        for i, m in enumerate(tf):
            if m.isfile() and _is_image(m.name):
                if _split_rel([p for p in m.name.split("/") if p not in ("", ".")]) is not None:
                    return True
            if i >= max_members:
                break
    return False


def source_key(path: Path, tag: str | None = None) -> str:
    """A cache key of `path` as it is now (its absolute path and stat; every file's, for a
    directory) and `tag` (default: this cache's format and the pixel limit)."""
    h = hashlib.sha256((tag or CACHE_FORMAT).encode())
    limit = "" if tag else f"|{max_image_pixels()}"
    path = path.resolve()
    st = path.stat()
    # Size and mtime alone miss a file rewritten with its mtime set back (`cp -p`,
    # `touch -r`): the change time and inode, which nothing sets back, are hashed too.
    h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
             f"{limit}".encode())
    if path.is_dir():
        # A directory's own times miss edits deeper down: hash every file's stat (of
        # the link itself when its target is missing).
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                try:
                    s = os.stat(p)
                except OSError:
                    try:
                        s = os.lstat(p)
                    except OSError:
                        continue  # gone meanwhile
                h.update(f"{p}|{s.st_mode}|{s.st_size}|{s.st_mtime_ns}|{s.st_ctime_ns}|"
                         f"{s.st_ino}".encode())
    return h.hexdigest()[:32]


def _cache_path(path: Path) -> Path:
    return reslab_home() / "cache" / f"{source_key(path)}.pt"


def _decode_all(listing: _Listing, source: Path, skip_corrupt: bool, progress: bool,
                test_only: bool = False) -> dict:
    from tqdm.auto import tqdm

    by_split = {s: listing.items.get(s) or [] for s in SPLITS}
    if not by_split["train"]:
        raise ReslabError(f"{source} has no images under train/<class>/")
    test_name = "test" if by_split["test"] else "val" if by_split["val"] else None
    if test_name is None:
        raise ReslabError(f"{source} has train/ but neither test/<class>/ nor val/<class>/")
    classes = listing.classes["train"]
    class_index = {c: i for i, c in enumerate(classes)}
    want = ["train", test_name] + (["val"] if test_name == "test" and by_split["val"] else [])
    for split in want[1:]:
        check_same_classes(f"{source}: {split}/", listing.classes[split], "train/", classes)
    if test_only:  # evaluation: the training images are listed (for the classes), not decoded
        want = [test_name]
    total = sum(len(by_split[s]) for s in want)
    out: dict = {"format": CACHE_FORMAT, "classes": classes, "skipped": list(listing.skipped),
                 "test_name": test_name}
    shape: tuple[int, ...] | None = None
    first_name = ""
    with tqdm(total=total, desc=f"decoding {source.name}", unit="img",
              disable=not progress) as bar:
        for split in want:
            items = sorted(by_split[split], key=lambda t: (class_index[t[0]], t[1]))
            images: torch.Tensor | None = None
            labels = torch.empty(len(items), dtype=torch.int64)
            n = 0
            for cls, shown, src in items:
                bar.update(1)
                try:
                    data = read_regular_file(src) if isinstance(src, Path) else src
                    img = _decode(data, shown)
                except Exception as e:
                    if not skip_corrupt:
                        skip = ", or pass skip_corrupt=True (--skip-corrupt) to skip it"
                        if isinstance(e, FileNotFoundError):  # deleted since the scan
                            raise vanished_error(shown, source, skip) from None
                        why = (str(e) if isinstance(e, ReslabError) else
                               f"cannot read image {shown} ({e.strerror or e})"
                               if isinstance(e, OSError) else
                               f"cannot decode image {shown} ({type(e).__name__}: {e})")
                        raise ReslabError(f"{why}; fix or delete it{skip}") from None
                    warnings.warn(f"skipping unreadable image {shown}", stacklevel=2)
                    out["skipped"].append(shown)
                    continue
                if shape is None:
                    shape, first_name = tuple(img.shape), shown
                elif tuple(img.shape) != shape:
                    raise ReslabError(
                        f"images differ in size: {shown} is {tuple(img.shape)[1:]} but "
                        f"{first_name} is {shape[1:]}; this loader keeps CIFAR-like images at "
                        "their size, for large images of varying size use --recipe imagenet"
                    )
                if images is None:
                    images = torch.empty((len(items), *shape), dtype=torch.uint8)
                images[n] = img
                labels[n] = class_index[cls]
                n += 1
            if images is None:
                raise ReslabError(f"{source}: no readable images in {split}/")
            counts = torch.bincount(labels[:n], minlength=len(classes))
            if (counts == 0).any():
                lost = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
                raise ReslabError(
                    f"{source}: no readable images of class {', '.join(lost[:5])} in {split}/ "
                    "(all were skipped); the number of classes must not change silently: fix "
                    "or replace its images"
                )
            out[f"{split}_images"] = images[:n].clone() if n < len(items) else images
            out[f"{split}_labels"] = labels[:n].clone()
    if test_only:
        out["train_images"] = torch.empty((0, *shape), dtype=torch.uint8)
        out["train_labels"] = torch.empty(0, dtype=torch.int64)
    return out


def _to_image_data(d: dict, name: str) -> ImageData:
    val = None
    if "val_images" in d and d["test_name"] == "test":
        val = ImageSplit(d["val_images"], d["val_labels"])
    tn = d["test_name"]
    return ImageData(
        name=name,
        classes=list(d["classes"]),
        train=ImageSplit(d["train_images"], d["train_labels"]),
        test=ImageSplit(d[f"{tn}_images"], d[f"{tn}_labels"]),
        val=val,
    )


def _folder_name(path: Path) -> str:
    name = path.name
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def load_image_folder(
    path: str | Path, *, skip_corrupt: bool = False, progress: bool = True, cache: bool = True,
    test_only: bool = False,
) -> ImageData:
    """Load an image folder (directory or tar of one), decoding once and caching.

    Class names are the sorted folder names of `train/`; the test split is `test/`,
    or `val/` when there is no `test/` (and a `val/` beside `test/` becomes `val`); every
    split must have the same class folders, each with images. Unreadable images (and
    entries named like images that are not regular files: FIFOs, broken links) raise
    ReslabError naming the file, or with `skip_corrupt` are skipped with a warning; a
    class left without images is an error either way. `test_only`: decode only the test
    split (evaluation; the training split comes back empty) unless a cache holds both.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ReslabError(f"no such file or folder: {path}")
    cache_file = _cache_path(path) if cache else None
    d = None
    if cache_file is not None and cache_file.is_file():
        try:
            d = torch.load(cache_file, map_location="cpu", weights_only=True)
            if not isinstance(d, dict) or d.get("format") != CACHE_FORMAT:
                d = None
        except Exception:
            d = None  # unreadable cache: decode again and overwrite it
        if d is not None and d["skipped"]:
            if not skip_corrupt:
                raise ReslabError(
                    f"cannot read image {d['skipped'][0]} ({len(d['skipped'])} unreadable "
                    "in all); fix or delete it, or pass skip_corrupt=True (--skip-corrupt)"
                )
            for shown in d["skipped"]:
                warnings.warn(f"skipping unreadable image {shown}", stacklevel=2)
    if d is None:
        root = find_folder_root(path) if path.is_dir() else None
        if path.is_dir() and root is None:
            raise ReslabError(
                f"{path} is not an image folder: expected {path}/train/<class>/* and "
                f"{path}/test/<class>/* (or val/)"
            )
        try:
            if root is not None:
                listing = _dir_listing(root, skip_corrupt)
            else:
                listing = _tar_listing(path, skip_corrupt)
            d = _decode_all(listing, path, skip_corrupt, progress, test_only)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ReslabError(f"cannot read {path}: {e}") from None
        if cache_file is not None and not test_only:
            atomic_torch_save(cache_file, d)
    return _to_image_data(d, _folder_name(path))
