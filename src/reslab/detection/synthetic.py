"""A synthetic detection set for tests and CPU demos (no download): objects pasted at
random positions and sizes onto noisy canvases, with their exact boxes and classes.

`synthetic-det[:key=value,...]`, keys:
  images=N   images per split (default 256); train=N / test=N set one split's count
  size=S     canvas side in pixels (default 128)
  objects=K  at most K objects an image (default 3; each image has 1..K, never overlapping)
  classes=C  number of classes (default 4 for shapes, all of the source's otherwise)
  seed=X     everything follows from it (default 0)
  source=    `shapes` (default): coloured squares, discs, triangles and crosses, a class
             being one (colour, shape) pair (up to 16 classes); or a PATH that
             `reslab.data.load_image_data` reads, e.g. the CIFAR-10 JPEG copy
             (/work/shared/data/cifar10-jpeg75.tar.gz): its images are pasted, rescaled, and
             the class is the image's class (train uses its train images, test its test).
Splits: `train` (= `trainval`) and `test` (= `val`), drawn from separate random streams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reslab.data import load_image_data
from reslab.detection.data import DetectionDataset, ImageRecord
from reslab.errors import ReslabError

__all__ = ["SHAPES", "is_synthetic_spec", "open_synthetic", "parse_synthetic_det_spec",
           "synthetic_detection"]

PREFIX = "synthetic-det"
SHAPES = ("square", "disc", "triangle", "cross")
COLOURS = {
    "red": (225, 35, 35), "green": (35, 200, 60), "blue": (45, 75, 235),
    "yellow": (235, 215, 35), "magenta": (215, 45, 205), "cyan": (35, 215, 225),
    "white": (245, 245, 245), "orange": (245, 140, 25),
}
_SPLITS = {"train": "train", "trainval": "train", "test": "test", "val": "test"}
_INT_KEYS = ("images", "train", "test", "size", "objects", "classes", "seed")
#: The most a split's images may take in memory, where they are made and held (uint8 RGB):
#: each value may be in range and their product still ask for terabytes.
MAX_SPLIT_BYTES = 8 * 2**30


def _colour(k: int) -> str:
    """Shape class k's colour: 16 classes are 16 distinct (colour, shape) pairs."""
    return list(COLOURS)[(k + k // 4) % 8]


def shape_classes(n: int) -> list[str]:
    """The names of the first `n` shape classes, e.g. "red-square"."""
    return [f"{_colour(k)}-{SHAPES[k % 4]}" for k in range(n)]


def is_synthetic_spec(spec: str) -> bool:
    s = spec.strip().lower()
    return s == PREFIX or s.startswith(PREFIX + ":")


def parse_synthetic_det_spec(spec: str) -> dict:
    """`synthetic-det[:key=value,...]` -> keyword arguments of `synthetic_detection`."""
    usage = (f"bad data spec {spec!r}: use synthetic-det or synthetic-det:key=value,... with "
             "keys images, train, test, size, objects, classes, seed (integers) and source "
             "(shapes or a path)")
    rest = spec.strip().split(":", 1)[1] if ":" in spec else ""
    out: dict = {}
    for item in (p for p in rest.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value or key in out or key not in (*_INT_KEYS, "source"):
            raise ReslabError(usage)
        if key == "source":
            out[key] = value
            continue
        try:
            out[key] = int(value)
        except ValueError:
            raise ReslabError(usage) from None
    return out


def _backgrounds(n: int, size: int, g: torch.Generator, chunk: int = 64):
    """`n` noisy canvases (3, size, size) float in [0, 255], made `chunk` at a time: a dull
    random colour, a smooth variation and pixel noise."""
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        base = 60 + 80 * torch.rand(m, 3, 1, 1, generator=g)
        smooth = F.interpolate(torch.randn(m, 3, 4, 4, generator=g), size=(size, size),
                               mode="bilinear", align_corners=False)
        yield from base + 20 * smooth + 10 * torch.randn(m, 3, size, size, generator=g)


def _shape_mask(shape: str, h: int, w: int) -> torch.Tensor:
    v = (torch.arange(h) + 0.5) / h * 2 - 1
    u = (torch.arange(w) + 0.5) / w * 2 - 1
    v, u = v[:, None], u[None, :]
    if shape == "square":
        return torch.ones(h, w, dtype=torch.bool)
    if shape == "disc":
        return u * u + v * v <= 1
    if shape == "triangle":  # apex at the top
        return u.abs() <= (v + 1) / 2
    return (u.abs() <= 1 / 3) | (v.abs() <= 1 / 3)  # cross


class _Painter:
    """Draws one object of class `label` (0-based) into a canvas region; returns the
    object's exact box inside the region (x1, y1, x2, y2)."""

    def __init__(self, classes: int, pictures: tuple[torch.Tensor, torch.Tensor] | None):
        self.classes = classes
        self.pictures = pictures  # (uint8 (N, 3, h, w), labels (N,)) of the paste source

    def pick_label(self, g: torch.Generator) -> int:
        return int(torch.randint(self.classes, (1,), generator=g))

    def paint(self, canvas: torch.Tensor, label: int, x: int, y: int, w: int, h: int,
              g: torch.Generator) -> tuple[int, int, int, int]:
        if self.pictures is not None:
            images, labels = self.pictures
            pool = (labels == label).nonzero().flatten()
            j = pool[int(torch.randint(len(pool), (1,), generator=g))]
            pic = F.interpolate(images[j : j + 1].float(), size=(h, w), mode="bilinear",
                                antialias=True, align_corners=False)[0]
            canvas[:, y : y + h, x : x + w] = pic
            return 0, 0, w, h
        mask = _shape_mask(SHAPES[label % 4], h, w)
        colour = torch.tensor(COLOURS[_colour(label)], dtype=torch.float32)
        colour += 12 * torch.randn(3, generator=g)
        fill = colour[:, None, None] + 8 * torch.randn(3, h, w, generator=g)
        region = canvas[:, y : y + h, x : x + w]
        region[:, mask] = fill[:, mask]
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in placed)


def _generate(n: int, size: int, max_objects: int, painter: _Painter, g: torch.Generator,
              stream: str) -> tuple[list[torch.Tensor], list[ImageRecord]]:
    lo = max(8, size // 8)
    hi = max(lo, size * 2 // 5)
    images, records = [], []
    for i, canvas in enumerate(_backgrounds(n, size, g)):
        placed: list[tuple[int, int, int, int]] = []
        boxes, labels = [], []
        want = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        for _ in range(want):
            for _attempt in range(20):
                w = int(torch.randint(lo, hi + 1, (1,), generator=g))
                aspect = 0.75 + 0.6 * float(torch.rand(1, generator=g))
                h = min(size, max(lo, round(w * aspect)))
                x = int(torch.randint(0, size - w + 1, (1,), generator=g))
                y = int(torch.randint(0, size - h + 1, (1,), generator=g))
                if not _overlaps((x, y, x + w, y + h), placed):
                    break
            else:
                continue  # no room left for this object
            placed.append((x, y, x + w, y + h))
            label = painter.pick_label(g)
            bx1, by1, bx2, by2 = painter.paint(canvas, label, x, y, w, h, g)
            boxes.append([x + bx1, y + by1, x + bx2, y + by2])
            labels.append(label + 1)
        images.append(canvas.round_().clamp_(0, 255).to(torch.uint8))
        records.append(ImageRecord.build(i + 1, f"{stream}_{i:06d}.jpg", size, size, boxes,
                                         labels, [False] * len(labels)))
    return images, records


def synthetic_detection(split: str = "train", *, images: int = 256, train: int | None = None,
                        test: int | None = None, size: int = 128, objects: int = 3,
                        classes: int | None = None, seed: int = 0,
                        source: str = "shapes") -> DetectionDataset:
    """One split of the synthetic detection set (see the module docstring); deterministic
    from its arguments."""
    stream = _SPLITS.get(split)
    if stream is None:
        raise ReslabError(f"synthetic-det has the splits train (or trainval) and test (or "
                          f"val), not {split!r}")
    n = {"train": train, "test": test}[stream]
    n = images if n is None else n
    if not 1 <= n <= 1_000_000 or not 32 <= size <= 2048 or not 1 <= objects <= 64:
        raise ReslabError(f"synthetic-det needs 1 <= images <= 1000000, 32 <= size <= 2048 "
                          f"and 1 <= objects <= 64 (got {n}, {size}, {objects})")
    if n * 3 * size * size > MAX_SPLIT_BYTES:
        raise ReslabError(f"synthetic-det's {stream} split of {n} images of {size}x{size} "
                          f"would hold {n * 3 * size * size / 2**30:,.1f} GiB in memory, more "
                          f"than {MAX_SPLIT_BYTES / 2**30:.0f} GiB: use fewer images or a "
                          "smaller size")
    pictures = None
    if source == "shapes":
        k = 4 if classes is None else classes
        if not 1 <= k <= 16:
            raise ReslabError(f"synthetic-det with source=shapes has 1 to 16 classes, not {k}")
        names = shape_classes(k)
    else:
        data = load_image_data(source, progress=False)
        k = len(data.classes) if classes is None else classes
        if not 1 <= k <= len(data.classes):
            raise ReslabError(f"synthetic-det: {source} has {len(data.classes)} classes; "
                              f"classes={k} is out of range")
        part = data.train if stream == "train" else data.test
        keep = part.labels < k
        pictures = (part.images[keep], part.labels[keep])
        lacking = set(range(k)) - set(pictures[1].unique().tolist())
        if lacking:
            raise ReslabError(f"synthetic-det: {source} has no {stream} image of class "
                              f"{data.classes[min(lacking)]}")
        names = list(data.classes[:k])
    g = torch.Generator().manual_seed(2 * seed + (1 if stream == "test" else 0))
    imgs, records = _generate(n, size, objects, _Painter(k, pictures), g, stream)
    n_train = images if train is None else train
    n_test = images if test is None else test
    spec = (f"{PREFIX}:train={n_train},test={n_test},size={size},objects={objects},"
            f"classes={k},seed={seed},source={source}")
    return DetectionDataset(names, records, name=f"{spec} {stream}", split=stream,
                            layout="synthetic", images=imgs)


def open_synthetic(spec: str, split: str) -> DetectionDataset:
    """`synthetic_detection(split, **parse_synthetic_det_spec(spec))`."""
    return synthetic_detection(split, **parse_synthetic_det_spec(spec))
