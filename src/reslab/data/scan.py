"""Scanning one split of an image folder (`SPLIT/<class>/<image>`), for both loaders.

One pass of `os.scandir` per folder: a regular file's type comes from the directory
entry itself (no stat per image), so a 1.28M-image ImageNet train folder scans in
seconds into compact `(path, label)` tuples. Files named like images that cannot be
images are never opened (opening a FIFO blocks forever): FIFOs, sockets, devices and
broken symbolic links raise ReslabError naming them, or with `skip_corrupt` are skipped
with one warning. A class folder without images is an error even with `skip_corrupt`:
dropping it would silently change the number of classes and every label after it.
Symbolic links inside a class folder are followed only when they lead inside the data set
(its root folder, or the folder a class folder links to): others are skipped with one
warning that counts them, so a link cannot add images from elsewhere on the disk.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from reslab.errors import ReslabError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SKIP_HINT = "remove it, or pass skip_corrupt=True (--skip-corrupt) to skip it"


def is_image_name(name: str) -> bool:
    """Whether a file's base name looks like an image (extension; hidden files never)."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def not_a_file(path: str) -> str:
    """What `path` is, for a message, when it is not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link (its target does not exist)"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"unreadable ({e.strerror})"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def not_a_file_error(path: str, what: str | None = None, *, kind: str = "an image file",
                     hint: str | None = SKIP_HINT) -> ReslabError:
    """One line: `path` is `what` (found if None), not `kind`; then `hint` (how to skip it,
    in the calling command's words; None: no hint)."""
    return ReslabError(f"{path} is {what or not_a_file(path)}, not {kind}"
                       + (f"; {hint}" if hint else ""))


def vanished_error(path: str | os.PathLike, root: str | os.PathLike,
                   hint: str = "") -> ReslabError:
    """One line for an image listed when `root` was scanned but gone when read (deleted or
    moved meanwhile); `hint` (e.g. how to skip it) ends the message."""
    return ReslabError(f"image {os.fspath(path)} was gone when read (deleted or moved after "
                       f"{os.fspath(root)} was scanned): restore it, or run again to scan the "
                       f"folder anew{hint}")


def read_regular_file(path: str | os.PathLike, *, kind: str = "an image file",
                      hint: str | None = SKIP_HINT) -> bytearray:
    """The bytes of a regular file; ReslabError for anything else (`not_a_file_error` with
    `kind` and `hint`), without blocking on a FIFO (it is opened non-blocking and checked
    before reading)."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_a_file_error(path, kind=kind, hint=hint)
        buf = bytearray(st.st_size)
        n = f.readinto(buf) or 0
        if n < len(buf):  # shrank while we read
            del buf[n:]
        elif more := f.read():  # grew
            buf += more
    return buf


def class_folders(root: str) -> list[str]:
    """Sorted names of the class folders under `root` (directories or links to them;
    hidden ones skipped). ReslabError if `root` cannot be listed."""
    try:
        with os.scandir(root) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        raise ReslabError(
            f"image folder {root} does not exist; expected {root}/<class>/<image>"
        ) from None
    except OSError as e:
        raise ReslabError(f"cannot list {root}: {e.strerror}") from None


def check_same_classes(
    where: str, found: Sequence[str], ref_where: str, ref: Sequence[str]
) -> None:
    """ReslabError unless `found` (the classes of `where`) equals `ref` (of `ref_where`):
    labels are positions in the sorted class list, so they must be the same lists."""
    if list(found) == list(ref):
        return
    parts = []
    if missing := sorted(set(ref) - set(found)):
        parts.append(f"lacks {_few(missing)}")
    if extra := sorted(set(found) - set(ref)):
        parts.append(f"has classes not in {ref_where}: {_few(extra)}")
    raise ReslabError(
        f"{where} {' and '.join(parts)}; the class folders of {where} and {ref_where} must "
        "be the same (a label is the position of its class in the sorted list): add or "
        "remove class folders so that they agree"
    )


def empty_classes_error(where: str, empty: Sequence[str]) -> ReslabError:
    first = os.path.join(where, empty[0])
    more = f" ({len(empty)} such: {_few(empty)})" if len(empty) > 1 else ""
    return ReslabError(
        f"class folder {first} has no images{more}; every class needs images, even with "
        "--skip-corrupt, since dropping one would silently change the number of classes "
        "and the labels: add images or remove the folder from every split"
    )


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n} more)" if len(names) > n else "")


@dataclass
class SplitScan:
    """What a split folder holds: sorted class names, `(path, label)` samples (each class's
    images in sorted order), and the paths skipped as not regular files."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _walk(top: str, label: int, samples: list, problems: list, inside: Sequence[str],
          outside: list) -> None:
    """Append `top`'s images (recursively, sorted, links followed once) to `samples`, and
    `(path, what is wrong)` of image-named entries that are not regular files (and of
    folders that cannot be listed) to `problems`. Symbolic links (to images or folders)
    whose target is not under one of the real paths `inside` go to `outside`, unfollowed."""
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already scanned
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append((d, f"cannot be listed ({e.strerror})"))
            continue
        subdirs = []
        for e in entries:
            name = e.name
            if name.startswith("."):
                continue
            try:
                if e.is_symlink() and not _inside(os.path.realpath(e.path), inside):
                    if is_image_name(name) or e.is_dir():
                        outside.append(e.path)
                    continue
                if is_image_name(name) and e.is_file():  # follows links; no stat if plain
                    samples.append((e.path, label))
                elif e.is_dir():
                    subdirs.append(e.path)
                elif is_image_name(name):
                    problems.append((e.path, f"is {not_a_file(e.path)}, not an image file"))
            except OSError as err:  # e.g. a link into a folder we may not read
                problems.append((e.path, f"cannot be read ({err.strerror})"))
        stack.extend(reversed(subdirs))


def scan_split(
    root: str | os.PathLike,
    *,
    skip_corrupt: bool = False,
    classes: Sequence[str] | None = None,
    classes_of: str = "the training split",
    data_root: str | os.PathLike | None = None,
) -> SplitScan:
    """Scan `root/<class>/...` for images.

    `classes`: the class list the split must have (e.g. the training split's, named by
    `classes_of` in the message). Image-named entries that are not regular files raise
    ReslabError naming them, or with `skip_corrupt` are skipped with a warning; a class
    folder left without images raises ReslabError in either case. Symbolic links are
    followed only to targets inside `data_root` (default `root`; e.g. the folder holding
    train/ and val/) or inside the real folder of their class; the others are skipped
    with a warning that counts them.
    """
    root = os.fspath(root)
    base = os.path.realpath(root if data_root is None else data_root)
    names = class_folders(root)
    if not names:
        raise ReslabError(f"no class folders in {root}: expected {root}/<class>/<image>")
    if classes is not None:
        check_same_classes(root, names, classes_of, classes)
    samples: list[tuple[str, int]] = []
    problems: list[tuple[str, str]] = []
    outside: list[str] = []
    empty = []
    for label, name in enumerate(names):
        before = len(samples)
        top = os.path.join(root, name)
        _walk(top, label, samples, problems, (base, os.path.realpath(top)), outside)
        if len(samples) == before:
            empty.append(name)
    if outside:
        warnings.warn(
            f"skipping {len(outside)} symbolic links in {root} that point outside the data "
            f"set {base} (e.g. {outside[0]} -> {os.path.realpath(outside[0])}): links are "
            "followed only inside it; copy the files in to use them",
            stacklevel=2,
        )
    if problems and not skip_corrupt:
        path, wrong = problems[0]
        more = f" ({len(problems)} such entries in all)" if len(problems) > 1 else ""
        raise ReslabError(f"{path} {wrong}{more}; {SKIP_HINT}")
    if problems:
        warnings.warn(
            f"skipping {len(problems)} entries named like images that are not readable "
            "image files: " + _few([f"{p} {wrong}" for p, wrong in problems], 3),
            stacklevel=2,
        )
    if empty:
        raise empty_classes_error(root, empty)
    return SplitScan(names, samples, [p for p, _ in problems])
