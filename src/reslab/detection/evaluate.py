"""Detection metrics with the field's own rules (Tables 7 and 8).

- COCO (Table 8: mAP@.5 and mAP@[.5, .95], and per object size) by pycocotools' COCOeval,
  run on the ground truth `coco_ground_truth(dataset)` writes (difficult and crowd boxes
  as `iscrowd: 1`) and the detections `coco_results` writes: the same numbers anyone
  gets by running pycocotools on those two files.
- PASCAL VOC (Table 7) at IoU 0.5, written after the devkit's `voc_eval.py`: detections
  of a class in decreasing score order; each is matched to the ground-truth box of its
  image it overlaps most; IoU > 0.5 with a box not yet taken is a true positive, with a
  box already taken a false positive, with a difficult box neither; objects marked
  difficult do not count as positives. AP is the VOC 2007 11-point interpolated AP or
  the VOC 2010+ all-point AP (`voc_ap`). Boxes are continuous 0-based pixel coordinates
  (VOC's (xmin - 1, ymin - 1, xmax, ymax)), so areas need no devkit "+ 1".
Means are over the classes that have ground-truth objects; a class without any has
None for its APs, as have COCO's size ranges without objects.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from reslab.detection.coco import coco_ground_truth
from reslab.detection.data import DetectionDataset
from reslab.errors import ReslabError

__all__ = ["coco_ground_truth", "coco_results", "evaluate_detections", "scored_images",
           "voc_ap", "voc_eval"]

VOC_IOU = 0.5


def voc_ap(recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray,
           use_07_metric: bool) -> float:
    """Average precision from a precision/recall curve (detections in decreasing score
    order), as the VOC devkit: `use_07_metric` the VOC 2007 11-point interpolated AP
    (mean over recall thresholds t = 0, 0.1, ..., 1 of the best precision at recall >= t),
    else the VOC 2010+ area under the monotone precision envelope."""
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall {rec.shape} and precision {prec.shape} differ in length")
    if use_07_metric:
        # thresholds k / 10 exactly (the devkit's np.arange(0, 1.1, 0.1) has 0.30000000000000004)
        return float(sum(
            (prec[rec >= k / 10].max() if (rec >= k / 10).any() else 0.0) for k in range(11)
        ) / 11)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc_eval(gt_boxes: Sequence[np.ndarray], gt_difficult: Sequence[np.ndarray],
             det_images: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
             iou_threshold: float = VOC_IOU) -> tuple[float | None, float | None, int]:
    """One class's (VOC07 11-point AP, all-point AP, positives) as the devkit's voc_eval:
    `gt_boxes[i]` (G_i, 4) and `gt_difficult[i]` (G_i,) of image i; detections as parallel
    arrays (image index, score, xyxy box). APs are None when the class has no positive."""
    npos = int(sum(int((~np.asarray(d, dtype=bool)).sum()) for d in gt_difficult))
    if npos == 0:
        return None, None, 0
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    taken = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, j in enumerate(order):
        img = int(det_images[j])
        boxes = gt_boxes[img]
        if len(boxes) == 0:
            fp[d] = 1
            continue
        ious = _iou(np.asarray(det_boxes[j], dtype=np.float64), boxes)
        g = int(ious.argmax())
        if ious[g] > iou_threshold:
            if not gt_difficult[img][g]:
                if not taken[img][g]:
                    tp[d] = 1
                    taken[img][g] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, True), voc_ap(rec, prec, False), npos


def _as_numpy(detections: Sequence[dict], n: int, num_classes: int) -> list[dict]:
    if len(detections) != n:
        raise ValueError(f"{len(detections)} detections for {n} images: give one dict an image")
    out = []
    for i, d in enumerate(detections):
        boxes = torch.as_tensor(d["boxes"]).detach().cpu().double().reshape(-1, 4).numpy()
        scores = torch.as_tensor(d["scores"]).detach().cpu().double().reshape(-1).numpy()
        labels = torch.as_tensor(d["labels"]).detach().cpu().long().reshape(-1).numpy()
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"detections[{i}]: boxes, scores and labels differ in length")
        if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"detections[{i}]: labels must be 1..{num_classes}")
        out.append({"boxes": boxes, "scores": scores, "labels": labels})
    return out


def coco_results(dataset: DetectionDataset, detections: Sequence[dict]) -> list[dict]:
    """Detections in COCO's results format: [{"image_id", "category_id", "bbox": [x, y,
    w, h], "score"}], with the dataset's image ids and original category ids (bbox rounded
    to 0.01 pixel, score to 1e-6)."""
    dets = _as_numpy(detections, len(dataset), dataset.num_classes)
    category_ids = np.asarray(dataset.category_ids)
    out = []
    for r, d in zip(dataset.records, dets, strict=True):
        xywh = d["boxes"].copy()
        xywh[:, 2:] -= xywh[:, :2]
        for box, score, cat in zip(np.round(xywh, 2).tolist(), np.round(d["scores"], 6).tolist(),
                                   category_ids[d["labels"] - 1].tolist(), strict=True):
            out.append({"image_id": r.image_id, "category_id": cat, "bbox": box,
                        "score": score})
    return out


def _coco_eval(gt: dict, results: list[dict]) -> COCOeval:
    """COCOeval (bbox) of `results` against `gt`, with pycocotools' printing silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes edits its input
        else:  # loadRes refuses an empty list: no detection at all scores 0
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_ap(p: np.ndarray) -> float | None:
    p = p[p > -1]
    return float(p.mean()) if p.size else None


def _stat(v: float) -> float | None:
    return None if v < 0 else float(v)  # COCOeval's -1: no object of that kind


def scored_images(dataset: DetectionDataset, detections: Sequence[dict | None]
                  ) -> tuple[DetectionDataset, list[dict]]:
    """The images that were detected and their detections: images skipped as unreadable
    (None: `detect_dataset` under skip_bad) are left out, counted in one warning; their
    objects are not scored. ReslabError if no image is left."""
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detections for {len(dataset)} images: give one "
                         "dict an image")
    keep = [i for i, d in enumerate(detections) if d is not None]
    if len(keep) == len(dataset):
        return dataset, list(detections)  # type: ignore[arg-type]
    bad = [i for i, d in enumerate(detections) if d is None]
    why = dataset.unreadable.get(bad[0]) or f"image {dataset.image_info(bad[0])['file_name']}"
    if not keep:
        raise ReslabError(f"{dataset.name}: no image could be read (skip_bad skipped all "
                          f"{len(bad)}; first: {why})")
    warnings.warn(f"{dataset.name}: skipped {len(bad)} unreadable "
                  f"{'image' if len(bad) == 1 else 'images'} (skip_bad); "
                  f"{len(keep)} of {len(dataset)} are scored (first: {why})", stacklevel=2)
    return dataset.subset(keep), [detections[i] for i in keep]  # type: ignore[misc]


def evaluate_detections(dataset: DetectionDataset, detections: Sequence[dict | None]
                        ) -> dict:
    """Score `detections[i]` ({"boxes" (M, 4) xyxy, "scores" (M,), "labels" (M,) 1-based})
    of image `dataset[i]` with COCO's metrics and VOC's. Returns {"map50", "map",
    "map75", "map_small", "map_medium", "map_large" (COCOeval), "voc07_map50",
    "voc_map50", "per_class": {name: {"ap50", "ap" (COCO), "voc07_ap50", "voc_ap50",
    "objects" (non-difficult boxes)}}, "images" (scored), "skipped_images" (None
    detections: unreadable under skip_bad, left out by `scored_images`), "objects",
    "detections"}."""
    n_all = len(dataset)
    dataset, detections = scored_images(dataset, detections)
    dets = _as_numpy(detections, len(dataset), dataset.num_classes)
    ev = _coco_eval(coco_ground_truth(dataset), coco_results(dataset, detections))
    precision = ev.eval["precision"]  # [iou, recall, class, area, max detections]
    cat_pos = {c: k for k, c in enumerate(ev.params.catIds)}
    per_class: dict[str, dict] = {}
    voc07, voc = [], []
    for label, name in enumerate(dataset.classes, start=1):
        gt_boxes, gt_diff = [], []
        for r in dataset.records:
            sel = (r.labels == label).numpy()
            gt_boxes.append(r.boxes.numpy()[sel].astype(np.float64))
            gt_diff.append(r.difficult.numpy()[sel])
        images = np.concatenate([np.full(int((d["labels"] == label).sum()), i)
                                 for i, d in enumerate(dets)] or [np.zeros(0)])
        scores = np.concatenate([d["scores"][d["labels"] == label] for d in dets]
                                or [np.zeros(0)])
        boxes = np.concatenate([d["boxes"][d["labels"] == label] for d in dets]
                               or [np.zeros((0, 4))])
        ap07, ap, npos = voc_eval(gt_boxes, gt_diff, images, scores, boxes)
        k = cat_pos[dataset.category_ids[label - 1]]
        per_class[name] = {
            "ap50": _mean_ap(precision[0, :, k, 0, -1]),
            "ap": _mean_ap(precision[:, :, k, 0, -1]),
            "voc07_ap50": ap07, "voc_ap50": ap, "objects": npos}
        if npos:
            voc07.append(ap07)
            voc.append(ap)
    s = ev.stats
    return {
        "map50": _stat(s[1]), "map": _stat(s[0]), "map75": _stat(s[2]),
        "map_small": _stat(s[3]), "map_medium": _stat(s[4]), "map_large": _stat(s[5]),
        "voc07_map50": float(np.mean(voc07)) if voc07 else None,
        "voc_map50": float(np.mean(voc)) if voc else None,
        "per_class": per_class, "images": len(dataset),
        "skipped_images": n_all - len(dataset),
        "objects": sum(c["objects"] for c in per_class.values()),
        "detections": sum(len(d["labels"]) for d in dets),
    }
