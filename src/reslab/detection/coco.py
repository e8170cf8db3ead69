"""MS COCO layout (Appendix A, Table 8): an instances JSON (`images`, `annotations`,
`categories`) and a folder of images.

A root's split `S` is `annotations/instances_S.json`, `annotations/S.json` or `S.json`;
its images are in `S/`, `images/S/`, `images/` or the root (the first that holds them).
Boxes `[x, y, w, h]` become xyxy; crowd boxes (`iscrowd: 1`) are kept as `difficult`:
ignored by evaluation, as COCO's own, and excluded from training. Category ids map to
labels 1..K in increasing id order; `dataset.category_ids` maps them back, so detections
are written with the original ids. `coco_ground_truth` writes any `DetectionDataset` as
such a file (difficult boxes as crowd) and `write_coco` a whole folder.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from reslab.atomic_write import atomic_write_bytes, atomic_write_json
from reslab.data.scan import not_a_file, read_regular_file
from reslab.detection.data import (
    MAX_SIDE,
    SKIP_BAD_HINT,
    BoxTally,
    DetectionDataset,
    ImageRecord,
    inside,
)
from reslab.detection.voc import encode_image
from reslab.errors import ReslabError

__all__ = ["annotation_file", "coco_ground_truth", "is_coco_root", "read_coco", "write_coco"]


class _Bad(Exception):
    """One image or annotation that cannot be used: an error, or skipped under skip_bad."""


def annotation_file(root: Path, split: str) -> Path | None:
    """The instances JSON of `split` under `root`, or None."""
    for path in (root / "annotations" / f"instances_{split}.json",
                 root / "annotations" / f"{split}.json", root / f"{split}.json"):
        if path.is_file():
            return path
    return None


def is_coco_root(root: Path, split: str) -> bool:
    """Whether `root` holds a COCO annotation file for `split`."""
    return annotation_file(root, split) is not None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v: object) -> bool:
    """An integer id that fits int64 (numpy and pycocotools hold ids so)."""
    return _is_int(v) and -(2**63) <= v < 2**63  # type: ignore[operator]


def _as_float(v: float) -> float:
    """A JSON number as a float: an integer too large for one (1 and 400 zeros) is inf."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _load_json(path: Path) -> dict:
    try:
        d = json.loads(read_regular_file(path, kind="an annotation file", hint=None))
    except json.JSONDecodeError as e:
        raise ReslabError(f"cannot parse {path}: {e.msg} at line {e.lineno}, column {e.colno} "
                          "(malformed or truncated JSON)") from None
    except UnicodeDecodeError as e:
        raise ReslabError(f"cannot parse {path}: not UTF-8 text ({e.reason})") from None
    except ValueError as e:  # Python's limit on integer digits (4,300)
        raise ReslabError(f"cannot parse {path}: {str(e).split(':')[0]} (a number far too "
                          "long for an annotation)") from None
    except RecursionError:
        raise ReslabError(f"cannot parse {path}: lists or objects nested too deeply for an "
                          "annotation file") from None
    except OSError as e:
        raise ReslabError(f"cannot read {path} ({e.strerror or e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(
            d.get("categories"), list) or not isinstance(d.get("annotations", []), list):
        raise ReslabError(f"{path} is not a COCO instances file: it needs the lists 'images', "
                          "'annotations' and 'categories'")
    return d


def _categories(d: dict, path: Path) -> tuple[list[int], list[str]]:
    cats: dict[int, str] = {}
    names: dict[str, int] = {}
    for k, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(
                c.get("name"), str):
            raise ReslabError(f"{path}: categories[{k}] needs an integer 'id' and a 'name'")
        if c["id"] in cats:
            raise ReslabError(f"{path}: category id {c['id']} appears twice")
        if c["name"] in names:  # evaluation would merge their objects under one name
            raise ReslabError(f"{path}: category name {c['name'][:80]!r} appears twice (ids "
                              f"{names[c['name']]} and {c['id']}): categories must have "
                              "distinct names")
        cats[c["id"]] = c["name"]
        names[c["name"]] = c["id"]
    if not cats:
        raise ReslabError(f"{path} has no categories")
    ids = sorted(cats)
    return ids, [cats[i] for i in ids]


def _images(d: dict, path: Path, tally: BoxTally, skip_bad: bool) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for k, im in enumerate(d["images"]):
        ok = (isinstance(im, dict) and _is_id(im.get("id")) and isinstance(
            im.get("file_name"), str) and im["file_name"] and _is_int(im.get("width"))
            and _is_int(im.get("height")) and 0 < im["width"] <= MAX_SIDE
            and 0 < im["height"] <= MAX_SIDE)
        if not ok:
            msg = (f"{path}: images[{k}] needs an integer 'id', a 'file_name' and integer "
                   f"'width' and 'height' in 1..{MAX_SIDE:,}")
            if not skip_bad:
                raise ReslabError(f"{msg}; {SKIP_BAD_HINT}")
            tally.skip(msg)
            continue
        if im["id"] in images:
            raise ReslabError(f"{path}: image id {im['id']} appears twice")
        images[im["id"]] = im
    if not images:
        raise ReslabError(f"{path} lists no usable image")
    return images


def _relative_inside(file_name: str) -> bool:
    """Whether a COCO `file_name` stays in its folder: relative, no `..` part."""
    parts = file_name.replace("\\", "/").split("/")
    return not os.path.isabs(file_name) and ".." not in parts and file_name[:1] not in "/\\"


def _image_folder(root: Path, split: str, images: dict[int, dict], path: Path) -> Path:
    """The first candidate folder that holds the most of the first images."""
    sample = [im["file_name"] for im in list(images.values())[:20]
              if _relative_inside(im["file_name"])]
    if not sample:  # every name leads out of the folder: each is skipped and counted
        return root
    best, found = None, 0
    for folder in (root / split, root / "images" / split, root / "images", root):
        n = sum((folder / f).is_file() for f in sample)
        if n > found:
            best, found = folder, n
        if n == len(sample):
            break
    if best is None:
        raise ReslabError(
            f"{path}: image {sample[0]} is in none of {root / split}/, {root / 'images' / split}/"
            f", {root / 'images'}/ or {root}/: put the images of {split} there")
    return best


def _box(ann: object, k: int, path: Path, cat_index: dict[int, int],
         images: dict[int, dict]) -> tuple[int, list[float], int, bool, float | None]:
    """(image id, xyxy box, label, crowd, area) of annotations[k]; _Bad if malformed."""
    where = f"{path}: annotations[{k}]"
    if not isinstance(ann, dict):
        raise _Bad(f"{where} is not an object")
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
        raise _Bad(f"{where} names image_id {ann.get('image_id')!r}, not in 'images'")
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_index:
        raise _Bad(f"{where} names category_id {ann.get('category_id')!r}, not in "
                   "'categories'")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _Bad(f"{where} has bbox {bbox!r}, not [x, y, width, height]")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # True/False compare equal to 1/0
        raise _Bad(f"{where} has iscrowd {crowd!r}, not 0 or 1")
    area = _as_float(ann["area"]) if _is_number(ann.get("area")) else math.nan
    area = area if math.isfinite(area) and area > 0 else None
    x, y, w, h = (_as_float(v) for v in bbox)
    return ann["image_id"], [x, y, x + w, y + h], cat_index[ann["category_id"]], bool(crowd), area


def read_coco(root: Path, split: str, *, skip_bad: bool = False) -> DetectionDataset:
    """The images of a COCO split in increasing image id order, with their boxes."""
    root = Path(root)
    path = annotation_file(root, split)
    if path is None:
        raise ReslabError(f"no COCO annotation file for split {split!r} under {root}")
    d = _load_json(path)
    tally = BoxTally()
    category_ids, classes = _categories(d, path)
    cat_index = {c: k + 1 for k, c in enumerate(category_ids)}
    images = _images(d, path, tally, skip_bad)
    folder = _image_folder(root, split, images, path)
    per_image: dict[int, list] = {i: [] for i in images}
    for k, ann in enumerate(d.get("annotations", [])):
        try:
            image_id, *rest = _box(ann, k, path, cat_index, images)
        except _Bad as e:
            if not skip_bad:
                raise ReslabError(f"{e}; {SKIP_BAD_HINT}") from None
            tally.skip(str(e))
            continue
        per_image[image_id].append(rest)
    records = []
    allowed = [Path(os.path.realpath(root)), Path(os.path.realpath(folder))]
    for image_id in sorted(images):
        im = images[image_id]
        file = folder / im["file_name"]
        if not _relative_inside(im["file_name"]) or (file.is_file() and not inside(file, allowed)):
            tally.leave_out(f"file_name {im['file_name'][:80]!r} (id {image_id}) in {path}"
                            + ("" if not file.is_file() else f" -> {os.path.realpath(file)}"))
            continue
        if not file.is_file():
            msg = (f"{path}: image {im['file_name']} (id {image_id}) is missing: no {file}"
                   if not os.path.lexists(file) else
                   f"{path}: image {im['file_name']} (id {image_id}): {file} is "
                   f"{not_a_file(str(file))}, not an image file")
            if not skip_bad:
                raise ReslabError(f"{msg}; {SKIP_BAD_HINT}")
            tally.skip(msg)
            continue
        anns = per_image[image_id]
        where = f"{path}: image {image_id}"
        boxes, keep = tally.clean([a[0] for a in anns], im["width"], im["height"], where)
        kept = [a for a, k in zip(anns, keep.tolist(), strict=True) if k]
        b = boxes[keep]
        areas = [a[3] if a[3] is not None else float((r[2] - r[0]) * (r[3] - r[1]))
                 for a, r in zip(kept, b.tolist(), strict=True)]
        records.append(ImageRecord.build(
            image_id, im["file_name"], im["width"], im["height"], b, [a[1] for a in kept],
            [a[2] for a in kept], areas, path=file))
    if not records:
        raise ReslabError(f"{path}: no usable image (all were skipped{tally.first_reason()})")
    tally.warn(str(path))
    return DetectionDataset(classes, records, name=f"coco:{root} {split}", split=split,
                            layout="coco", category_ids=category_ids, skip_bad=skip_bad,
                            sources=[path])


def coco_ground_truth(dataset: DetectionDataset) -> dict:
    """`dataset`'s annotations as a COCO instances dict (images, annotations, categories):
    boxes [x, y, w, h], difficult boxes as `iscrowd: 1`, the dataset's image and category
    ids, annotation ids 1, 2, ... (what pycocotools' COCO reads)."""
    images, annotations = [], []
    for r in dataset.records:
        images.append({"id": r.image_id, "file_name": r.file_name, "width": r.width,
                       "height": r.height})
        for box, label, diff, area in zip(r.boxes.tolist(), r.labels.tolist(),
                                          r.difficult.tolist(), r.area.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": r.image_id,
                "category_id": dataset.category_ids[label - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(diff)})
    categories = [{"id": c, "name": n, "supercategory": "object"}
                  for c, n in zip(dataset.category_ids, dataset.classes, strict=True)]
    return {"info": {"description": dataset.name}, "images": images,
            "annotations": annotations, "categories": categories}


def write_coco(dataset: DetectionDataset, root: str | os.PathLike, split: str | None = None,
               *, image_format: str = "jpg") -> Path:
    """Write `dataset` as a COCO-layout split: images in `root/<split>/`, annotations in
    `root/annotations/instances_<split>.json`. Returns the annotation file."""
    if image_format not in ("jpg", "png"):
        raise ReslabError(f"image_format must be jpg or png, got {image_format!r}")
    root = Path(root)
    split = split or dataset.split or "train"
    gt = coco_ground_truth(dataset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for i, im in enumerate(gt["images"]):
            im["file_name"] = f"{Path(im['file_name']).stem}.{image_format}"
            atomic_write_bytes(root / split / im["file_name"],
                               encode_image(dataset.image(i), image_format))
    return atomic_write_json(root / "annotations" / f"instances_{split}.json", gt)
