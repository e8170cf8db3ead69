"""Object detection (the paper's Appendix A, Tables 7 and 8): data, detectors, training
and evaluation, on torchvision's detection engine and reslab's run machinery.

Data: `open_detection_data(spec, split)` (PASCAL VOC roots, COCO roots, synthetic-det)
-> `DetectionDataset`; `detection_collate`, `hflip`; `write_voc` / `write_coco` build
layout folders. Evaluation: `evaluate_detections` (pycocotools' COCO metrics, the VOC
2007 and 2010+ AP rules), `coco_ground_truth`, `coco_results`, `voc_ap`. Detectors:
`create_detector` (c4, fpn, vgg16 on torchvision's FasterRCNN), `DetectConfig` (the VOC and
COCO recipes), `train_detector` (the run folder, log, checkpoint and engine of the
classifiers), `load_detector` (a trained detector's checkpoint).
"""

from reslab.detection.coco import coco_ground_truth, read_coco, write_coco
from reslab.detection.config import DetectConfig
from reslab.detection.data import DetectionDataset, ImageRecord, detection_collate, hflip
from reslab.detection.evaluate import coco_results, evaluate_detections, voc_ap, voc_eval
from reslab.detection.inference import load_detector
from reslab.detection.models import create_detector
from reslab.detection.open_data import open_detection_data
from reslab.detection.synthetic import synthetic_detection
from reslab.detection.trainer import train_detector
from reslab.detection.voc import VOC_CLASSES, read_voc, write_voc

__all__ = [
    "VOC_CLASSES",
    "DetectConfig",
    "DetectionDataset",
    "ImageRecord",
    "coco_ground_truth",
    "coco_results",
    "create_detector",
    "detection_collate",
    "evaluate_detections",
    "hflip",
    "load_detector",
    "open_detection_data",
    "read_coco",
    "read_voc",
    "synthetic_detection",
    "train_detector",
    "voc_ap",
    "voc_eval",
    "write_coco",
    "write_voc",
]
