"""Detection data: images with boxes, one dataset type for every layout (Appendix A).

`open_detection_data(spec, split)` reads a PASCAL VOC root (or several joined by "," for
the paper's 07+12 union), a COCO root, or generates `synthetic-det[:key=value,...]`; each
becomes a `DetectionDataset`: per image a uint8 RGB tensor (3, H, W) and a target of
xyxy pixel boxes (0-based, continuous: a box covering pixel columns 0..9 is [0, 10]),
1-based labels (0 is the background) and a `difficult` flag (VOC "difficult", COCO
"iscrowd"): such boxes are ignored by evaluation and excluded from training.

Annotations are read when the dataset is opened, so bad input surfaces at once, as one
line naming the file: a malformed or truncated XML/JSON, an unknown class, a missing
image, a split naming a missing id (errors, or with `skip_bad` skipped and counted in one
warning). Boxes partly outside their image are clipped to it; boxes wholly outside, of
zero or negative size or with non-finite coordinates are dropped; both are counted in one
warning. Paths that would lead outside the data set (ids or file names with `..` or a
folder, symbolic links to elsewhere) are skipped and counted in one warning, as image
folders' links are. Images are decoded only when indexed; with `skip_bad`, an image that
cannot be decoded (truncated, empty, a decompression bomb) is skipped where it is read:
training takes the next readable image instead, evaluation leaves it out and counts it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.tv_tensors import BoundingBoxFormat

from reslab.data.decode import decode_image_file
from reslab.errors import ReslabError

__all__ = [
    "SKIP_BAD_HINT",
    "DetectionDataset",
    "ImageRecord",
    "detection_collate",
    "hflip",
]

SKIP_BAD_HINT = "fix or remove it, or pass skip_bad=True (--skip-bad) to skip it"
#: The largest image side (pixels) an annotation may give; beyond it is not an image.
MAX_SIDE = 1 << 20


def read_image(path: Path, hint: str | None = SKIP_BAD_HINT) -> torch.Tensor:
    """The one place detection decodes an image file (reslab's one guarded decoder): uint8
    RGB (3, H, W), or ReslabError naming the file (too many pixels, not decodable, a FIFO;
    `hint` says how the calling command skips it, None for a command that cannot)."""
    return decode_image_file(path, hint=hint)


def inside(path: Path, folders: Sequence[Path]) -> bool:
    """Whether `path`, symbolic links resolved, lies in one of `folders` (real paths)."""
    real = os.path.realpath(path)
    return any(real == str(f) or real.startswith(str(f).rstrip(os.sep) + os.sep)
               for f in folders)


def plain_name(name: str) -> bool:
    """Whether `name` names an entry of a folder itself: not absolute, no folder part,
    not `.` or `..` (so it cannot lead out of the folder)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


@dataclass
class ImageRecord:
    """One image's annotation: its identity, size and (already cleaned) boxes.

    `boxes` float32 (N, 4) xyxy pixels, `labels` int64 (N,) 1-based, `difficult` bool
    (N,); `area` float32 (N,) is the area COCO's size ranges use (COCO's own "area" for a
    COCO file, else the box area). `path` is the image file (None: held in memory)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: torch.Tensor
    labels: torch.Tensor
    difficult: torch.Tensor
    area: torch.Tensor
    path: Path | None = None

    @staticmethod
    def build(image_id: int, file_name: str, width: int, height: int, boxes: Sequence,
              labels: Sequence[int], difficult: Sequence[bool], area: Sequence | None = None,
              path: Path | None = None) -> ImageRecord:
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        a = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) if area is None else torch.as_tensor(
            area, dtype=torch.float32).reshape(-1)
        return ImageRecord(image_id, file_name, int(width), int(height), b,
                           torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
                           torch.as_tensor(difficult, dtype=torch.bool).reshape(-1), a, path)


@dataclass
class BoxTally:
    """Boxes clipped to their image or dropped while reading, for one warning per dataset."""

    clipped: int = 0
    dropped: int = 0
    first: str = ""
    skipped: list[str] = field(default_factory=list)  # what skip_bad skipped, one line each
    outside: list[str] = field(default_factory=list)  # paths leading out of the data set

    def clean(self, boxes: list[list[float]], width: int, height: int, where: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `boxes` (xyxy) to the image: (all boxes clipped, float32 (N, 4); the mask of
        those kept: finite and of positive size after clipping)."""
        if not boxes:
            return torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool)
        b = torch.tensor(boxes, dtype=torch.float64)
        lim = torch.tensor([width, height, width, height], dtype=torch.float64)
        c = torch.minimum(b.clamp(min=0), lim)
        keep = b.isfinite().all(1) & (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
        n_clip, n_drop = int((keep & (c != b).any(1)).sum()), int((~keep).sum())
        if (n_clip or n_drop) and not self.first:
            self.first = where
        self.clipped += n_clip
        self.dropped += n_drop
        return c.float(), keep

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def first_reason(self) -> str:
        """Why the first entry was skipped, as ", e.g. ..." ("" if none was)."""
        first = (self.skipped or [f"{w}: outside the data set" for w in self.outside] or [""])[0]
        return f", e.g. {first}" if first else ""

    def leave_out(self, what: str) -> None:
        """Count an id, file name or link that leads outside the data set (skipped)."""
        self.outside.append(what)

    def warn(self, source: str) -> None:
        if self.clipped or self.dropped:
            warnings.warn(
                f"{source}: clipped {self.clipped} boxes partly outside their image and "
                f"dropped {self.dropped} boxes outside it, of zero or negative size or with "
                f"non-finite coordinates (first in {self.first})", stacklevel=3)
        if self.skipped:
            n = len(self.skipped)
            warnings.warn(f"{source}: skipped {n} bad {'entry' if n == 1 else 'entries'} "
                          "(skip_bad): "
                          + "; ".join(self.skipped[:3])
                          + (" ..." if len(self.skipped) > 3 else ""), stacklevel=3)
        if self.outside:
            n = len(self.outside)
            warnings.warn(f"{source}: skipped {n} {'image' if n == 1 else 'images'} whose path "
                          f"leads outside the data set (e.g. {self.outside[0]}): ids and file "
                          "names are read inside their folder and symbolic links followed only "
                          "inside it; copy the files in to use them", stacklevel=3)


class DetectionDataset(torch.utils.data.Dataset):
    """Images and their boxes (see the module docstring).

    `classes` (no background): label k is `classes[k - 1]`; `category_ids[k - 1]` is the
    id a COCO file gave that class (1..K for other layouts). `dataset[i]` is
    `(image uint8 (3, H, W), {"boxes", "labels", "difficult", "image_id"})`; `target(i)`
    and `image_info(i)` give the annotation without decoding the image. `skip_bad` (set by
    the readers): `readable_image` gives None for an image that cannot be read. `sources`:
    the annotation files the reader read (what an output must never replace).
    """

    def __init__(self, classes: Sequence[str], records: Sequence[ImageRecord], *, name: str,
                 split: str = "", layout: str = "memory",
                 category_ids: Sequence[int] | None = None,
                 images: Sequence[torch.Tensor] | None = None, skip_bad: bool = False,
                 sources: Sequence[Path] = ()) -> None:
        self.classes = list(classes)
        self.skip_bad = skip_bad
        self.sources = list(sources)  # the annotation files read (split files, XML, JSON)
        self.unreadable: dict[int, str] = {}  # index -> why, of images skip_bad skipped
        self.records = list(records)
        self.name = name
        self.split = split
        self.layout = layout
        self.category_ids = list(category_ids) if category_ids is not None else list(
            range(1, len(self.classes) + 1))
        if len(self.category_ids) != len(self.classes):
            raise ValueError("category_ids must name one id per class")
        if images is not None and len(images) != len(self.records):
            raise ValueError(f"{len(images)} images for {len(self.records)} records")
        self._images = list(images) if images is not None else None

    @property
    def num_classes(self) -> int:
        """The number of object classes (without the background)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"DetectionDataset({self.name!r}, {len(self.classes)} classes, "
                f"{len(self)} images, {sum(len(r.labels) for r in self.records)} boxes)")

    def image(self, i: int) -> torch.Tensor:
        """Image i, uint8 RGB (3, H, W); ReslabError naming the file (and, without
        skip_bad, how to skip it) if it cannot be decoded or its size differs from its
        annotation's. An image held in memory (the
        synthetic set) is returned as stored: do not modify it in place."""
        r = self.records[i]
        if self._images is not None:
            return self._images[i]
        assert r.path is not None
        try:
            img = read_image(r.path, hint=None)
            if tuple(img.shape[1:]) != (r.height, r.width):
                raise ReslabError(
                    f"image {r.path} is {img.shape[2]}x{img.shape[1]} but its annotation says "
                    f"{r.width}x{r.height}; its boxes would be wrong: fix the annotation or "
                    "image")
        except ReslabError as e:  # say how to skip it, unless it is being skipped
            if self.skip_bad:
                raise
            raise ReslabError(f"{e}; {SKIP_BAD_HINT}") from None
        return img

    def readable_image(self, i: int) -> torch.Tensor | None:
        """Image i; with `skip_bad`, None if it cannot be read (why: `unreadable[i]`)."""
        if not self.skip_bad:
            return self.image(i)
        try:
            return self.image(i)
        except ReslabError as e:
            self.unreadable[i] = str(e)
            return None

    def target(self, i: int) -> dict:
        """The target of image i (fresh tensors): boxes, labels, difficult, image_id."""
        r = self.records[i]
        return {"boxes": r.boxes.clone(), "labels": r.labels.clone(),
                "difficult": r.difficult.clone(), "image_id": r.image_id}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        return self.image(i), self.target(i)

    def image_info(self, i: int) -> dict:
        """{"image_id", "file_name", "width", "height", "path"} of image i (path: the
        image file as a string, None for an image held in memory)."""
        r = self.records[i]
        return {"image_id": r.image_id, "file_name": r.file_name, "width": r.width,
                "height": r.height, "path": None if r.path is None else str(r.path)}

    def has_objects(self, i: int) -> bool:
        """Whether image i has a box to train on (one that is not difficult/crowd)."""
        return bool((~self.records[i].difficult).any())

    def indices_with_objects(self) -> list[int]:
        """The images training uses (Faster R-CNN skips images without objects)."""
        return [i for i in range(len(self)) if self.has_objects(i)]

    def subset(self, indices: Sequence[int]) -> DetectionDataset:
        """The images at `indices` (records shared, not copied)."""
        idx = [int(i) for i in indices]
        return DetectionDataset(
            self.classes, [self.records[i] for i in idx], name=self.name, split=self.split,
            layout=self.layout, category_ids=self.category_ids,
            images=None if self._images is None else [self._images[i] for i in idx],
            skip_bad=self.skip_bad, sources=self.sources)

    def fingerprint(self) -> str:
        """The split's identity (name, classes, ids, every image's name, size and boxes):
        equal for the same annotations, different when any of them changes."""
        h = hashlib.sha256(f"{self.name}|{self.split}|{self.classes}|{self.category_ids}|"
                           f"{len(self)}".encode())
        for r in self.records:
            h.update(f"{r.image_id}|{r.file_name}|{r.width}|{r.height}".encode())
            for t in (r.boxes, r.labels, r.difficult):
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict]]
                      ) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch of (image, target) pairs as torchvision's detectors take it: two lists
    (images differ in size)."""
    return [img for img, _ in batch], [t for _, t in batch]


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Flip an image (..., H, W) and its target's boxes left-right (Appendix A: "horizontal
    flips"); the other target entries are kept. Returns new tensors."""
    h, w = image.shape[-2:]
    out = dict(target)
    out["boxes"] = TF.horizontal_flip_bounding_boxes(
        target["boxes"], format=BoundingBoxFormat.XYXY, canvas_size=(h, w))
    return image.flip(-1), out
