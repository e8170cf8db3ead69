"""Detection metrics: the VOC AP rules against hand-computed cases, COCO numbers equal to
pycocotools' own run on the written files, a perfect detector scoring 1 (issue 16)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from reslab.atomic_write import atomic_write_json
from reslab.detection import (
    DetectionDataset,
    ImageRecord,
    coco_ground_truth,
    coco_results,
    evaluate_detections,
    open_detection_data,
    voc_ap,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_voc_ap_by_hand():
    recall = [0.2, 0.4, 0.4, 0.6]
    precision = [1.0, 1.0, 2 / 3, 0.75]
    # 11-point: best precision at recall >= t is 1 for t = 0 .. 0.4 (5 points), 0.75 for
    # t = 0.5, 0.6 (2 points), 0 for t = 0.7 .. 1 -> (5 + 1.5) / 11
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6.5 / 11)
    # all-point: envelope 1 up to recall 0.4, then 0.75 up to 0.6 -> 0.4 + 0.2 * 0.75
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.55)
    # recall exactly 0.3 counts for the threshold 0.3 (k / 10, not 0.30000000000000004)
    assert voc_ap([0.3], [1.0], True) == pytest.approx(4 / 11)
    assert voc_ap([], [], True) == voc_ap([], [], False) == 0.0


def hand_dataset() -> DetectionDataset:
    """Two images; class cat has one ordinary and one difficult box in image 1, one box in
    image 2; class dog has no box."""
    records = [
        ImageRecord.build(1, "a.jpg", 100, 100, [[0, 0, 10, 10], [50, 50, 70, 70]], [1, 1],
                          [False, True]),
        ImageRecord.build(2, "b.jpg", 100, 100, [[20, 20, 40, 40]], [1], [False]),
    ]
    images = [torch.zeros(3, 100, 100, dtype=torch.uint8)] * 2
    return DetectionDataset(["cat", "dog"], records, name="hand", images=images)


def dets(*rows) -> dict:
    """rows of (x1, y1, x2, y2, score, label)."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"boxes": t[:, :4], "scores": t[:, 4], "labels": t[:, 5].long()}


def test_voc_per_class_with_a_difficult_object():
    data = hand_dataset()
    detections = [
        dets((0, 0, 10, 10, 0.9, 1),     # TP: the ordinary box
             (50, 50, 70, 70, 0.8, 1),   # on the difficult box: neither TP nor FP
             (0, 0, 10, 10, 0.7, 1),     # duplicate: FP
             (5, 5, 15, 15, 0.95, 2)),   # a dog where there is none: no dog AP at all
        dets((60, 60, 80, 80, 0.6, 1),   # FP
             (20, 20, 40, 40, 0.5, 1)),  # TP
    ]
    r = evaluate_detections(data, detections)
    # cat: 2 positives; in score order TP, (ignored), FP, FP, TP ->
    # recall .5 .5 .5 .5 1, precision 1 1 .5 1/3 .5
    # 11-point: 1 for t = 0 .. 0.5 (6 points), 0.5 for t = 0.6 .. 1 (5) -> 8.5 / 11
    # all-point: 0.5 * 1 + 0.5 * 0.5 = 0.75
    cat = r["per_class"]["cat"]
    assert cat["voc07_ap50"] == pytest.approx(8.5 / 11)
    assert cat["voc_ap50"] == pytest.approx(0.75)
    assert cat["objects"] == 2
    dog = r["per_class"]["dog"]
    assert dog["objects"] == 0 and dog["voc07_ap50"] is None and dog["ap50"] is None
    assert r["voc07_map50"] == pytest.approx(8.5 / 11)  # mean over classes with objects
    assert r["voc_map50"] == pytest.approx(0.75)
    assert r["images"] == 2 and r["objects"] == 2 and r["detections"] == 6


def noisy_detections(data: DetectionDataset, seed: int = 0) -> list[dict]:
    """Ground truth moved by a few pixels, random scores, some wrong labels and boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(data)):
        t = data.target(i)
        n = len(t["boxes"])
        boxes = t["boxes"] + torch.randint(-4, 5, (n, 4), generator=g)
        labels = t["labels"].clone()
        flip = torch.rand(n, generator=g) < 0.2
        labels[flip] = labels[flip] % data.num_classes + 1
        extra = torch.rand(2, 4, generator=g) * 40
        extra[:, 2:] += extra[:, :2] + 5
        out.append({"boxes": torch.cat([boxes, extra]),
                    "scores": torch.rand(n + 2, generator=g),
                    "labels": torch.cat([labels, torch.randint(1, data.num_classes + 1, (2,),
                                                               generator=g)])})
    return out


def test_coco_numbers_equal_pycocotools_on_the_written_files(tmp_path):
    data = open_detection_data("synthetic-det:images=24,size=96,objects=3,seed=5", "test")
    data.records[0].difficult[0] = True  # one crowd/difficult box
    detections = noisy_detections(data)
    r = evaluate_detections(data, detections)
    gt_file = atomic_write_json(tmp_path / "gt.json", coco_ground_truth(data))
    res_file = atomic_write_json(tmp_path / "preds.json", coco_results(data, detections))
    assert json.loads(gt_file.read_text())["annotations"][0]["iscrowd"] == 1
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.1 < ev.stats[0] < 0.95  # a real, imperfect case
    assert r["map"] == ev.stats[0] and r["map50"] == ev.stats[1] and r["map75"] == ev.stats[2]
    assert [r["map_small"], r["map_medium"]] == list(ev.stats[3:5])
    assert r["map_large"] is None and ev.stats[5] == -1  # no large object at 96 px
    p = ev.eval["precision"]
    for k, name in enumerate(data.classes):
        ap50 = p[0, :, k, 0, -1]
        assert r["per_class"][name]["ap50"] == pytest.approx(ap50[ap50 > -1].mean())
    assert 0 < r["voc07_map50"] < 1 and 0 < r["voc_map50"] < 1


def test_results_use_the_original_category_ids(tmp_path):
    data = DetectionDataset(
        ["person", "dog"],
        [ImageRecord.build(42, "x.jpg", 50, 50, [[1, 2, 11, 7]], [2], [False])],
        name="ids", category_ids=[1, 18], images=[torch.zeros(3, 50, 50, dtype=torch.uint8)])
    res = coco_results(data, [dets((1, 2, 11, 7, 0.5, 2))])
    assert res == [{"image_id": 42, "category_id": 18, "bbox": [1.0, 2.0, 10.0, 5.0],
                    "score": 0.5}]
    gt = coco_ground_truth(data)
    assert gt["annotations"][0]["category_id"] == 18 and gt["images"][0]["id"] == 42
    assert evaluate_detections(data, [dets((1, 2, 11, 7, 0.5, 2))])["map"] == pytest.approx(1)


def test_perfect_detector_scores_one_and_none_scores_zero():
    data = hand_dataset()
    perfect = []
    for i in range(len(data)):
        t = data.target(i)
        keep = ~t["difficult"]
        perfect.append({"boxes": t["boxes"][keep], "scores": torch.ones(int(keep.sum())),
                        "labels": t["labels"][keep]})
    r = evaluate_detections(data, perfect)
    for key in ("map", "map50", "map75", "voc07_map50", "voc_map50"):
        assert r[key] == pytest.approx(1.0), key
    assert r["per_class"]["cat"]["ap"] == pytest.approx(1.0)
    empty = [dets() for _ in range(len(data))]
    r0 = evaluate_detections(data, empty)
    assert r0["map"] == r0["map50"] == r0["voc07_map50"] == r0["voc_map50"] == 0.0


def test_detections_must_match_the_images():
    data = hand_dataset()
    with pytest.raises(ValueError, match="one dict an image"):
        evaluate_detections(data, [dets()])
    with pytest.raises(ValueError, match="labels must be 1..2"):
        evaluate_detections(data, [dets((0, 0, 1, 1, 0.5, 3)), dets()])
