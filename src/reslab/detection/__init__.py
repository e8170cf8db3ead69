"""Object detection (the paper's Appendix A, Tables 7 and 8): data, detectors, training
and evaluation, on torchvision's detection engine and reslab's run machinery.

Data: `open_detection_data(spec, split)` (PASCAL VOC roots, COCO roots, synthetic-det)
-> `DetectionDataset`; `detection_collate`, `hflip`; `write_voc` / `write_coco` build
layout folders. Evaluation: `evaluate_detections` (pycocotools' COCO metrics, the VOC
2007 and 2010+ AP rules), `coco_ground_truth`, `coco_results`, `voc_ap`.
"""

from reslab.detection.coco import coco_ground_truth, read_coco, write_coco
from reslab.detection.data import DetectionDataset, ImageRecord, detection_collate, hflip
from reslab.detection.evaluate import coco_results, evaluate_detections, voc_ap, voc_eval
from reslab.detection.open_data import open_detection_data
from reslab.detection.synthetic import synthetic_detection
from reslab.detection.voc import VOC_CLASSES, read_voc, write_voc

__all__ = [
    "VOC_CLASSES",
    "DetectionDataset",
    "ImageRecord",
    "coco_ground_truth",
    "coco_results",
    "detection_collate",
    "evaluate_detections",
    "hflip",
    "open_detection_data",
    "read_coco",
    "read_voc",
    "synthetic_detection",
    "voc_ap",
    "voc_eval",
    "write_coco",
    "write_voc",
]
