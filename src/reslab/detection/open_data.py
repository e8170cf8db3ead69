"""`open_detection_data(spec, split)`: a detection split from a VOC root (or a 07+12 union
of them), a COCO root or the synthetic set, the layout found from the folder's content."""

from __future__ import annotations

from pathlib import Path

from reslab.detection.coco import is_coco_root, read_coco
from reslab.detection.data import DetectionDataset
from reslab.detection.synthetic import is_synthetic_spec, open_synthetic
from reslab.detection.voc import is_voc_root, read_voc
from reslab.errors import ReslabError

__all__ = ["open_detection_data"]


def open_detection_data(spec: str, split: str, *, skip_bad: bool = False) -> DetectionDataset:
    """Open a detection split.

    `spec`: a VOC root (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) or several
    joined by "," (the paper's 07+12); a COCO root (annotations/instances_<split>.json,
    annotations/<split>.json or <split>.json; images in <split>/, images/<split>/,
    images/ or the root); or "synthetic-det[:key=value,...]" (split train, trainval,
    test or val). `skip_bad`: skip bad annotations, images and ids, counted in one
    warning, instead of refusing them.
    """
    text = spec.strip()
    if not text:
        raise ReslabError("no detection data given: pass a VOC root, a COCO root or "
                          "synthetic-det[:key=value,...]")
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise ReslabError(f"bad split name {split!r}: give a name such as trainval, test or "
                          "val2017")
    if is_synthetic_spec(text):
        return open_synthetic(text, split)
    roots = [Path(p.strip()).expanduser() for p in text.split(",") if p.strip()]
    if not roots:
        raise ReslabError(f"detection data {spec!r} names no folder: pass a VOC root (or "
                          "ROOT1,ROOT2), a COCO root or synthetic-det[:key=value,...]")
    for root in roots:
        if not root.is_dir():
            raise ReslabError(f"detection data {root}: no such folder (give a VOC root, a COCO "
                              "root or synthetic-det[:key=value,...])")
    if all(is_voc_root(r) for r in roots):
        return read_voc(roots, split, skip_bad=skip_bad)
    if len(roots) > 1:
        bad = next(r for r in roots if not is_voc_root(r))
        raise ReslabError(f"{bad} is not a VOC root (Annotations/, JPEGImages/, "
                          "ImageSets/Main/): only VOC roots can be joined with ','")
    if is_coco_root(roots[0], split):
        return read_coco(roots[0], split, skip_bad=skip_bad)
    raise ReslabError(
        f"{roots[0]} is neither a VOC root (Annotations/, JPEGImages/, ImageSets/Main/) nor "
        f"a COCO root with a {split!r} split (annotations/instances_{split}.json, "
        f"annotations/{split}.json or {split}.json)")
