"""Table 7: object detection mAP on the PASCAL VOC 2007 test set, Faster R-CNN with VGG-16
vs ResNet-101 (Appendix A: trained on VOC 2007 trainval + 2012 trainval, `--data
VOC2007,VOC2012`; the VOC 2007 metric, 11-point AP at IoU 0.5, difficult objects ignored)."""

from __future__ import annotations

from reslab.experiments import detection
from reslab.experiments.report import Report
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "detection"
DETECT_RECIPE = "voc"
DESCRIPTION = ("detection: Faster R-CNN (c4) mAP@.5 on VOC 2007 test, VGG-16 vs ResNet-101 "
               "(or --models) beside Table 7; --data VOC2007,VOC2012 for 07+12")

#: Table 7 (mAP %, VOC 2007 test, trained on 07+12); VOC 2012 test (07++12) in the text.
PAPER_MAP = {"vgg16": 73.2, "resnet101": 76.4}
PAPER_VOC12 = {"vgg16": 70.4, "resnet101": 73.8}


def plan(s: Settings) -> list[RunSpec]:
    return detection.plan_runs(s, DETECT_RECIPE)


def data_info(s: Settings) -> detection.DataInfo:
    return detection.data_info(s, DETECT_RECIPE)


#: results.json and report.md of a detection experiment (not the classifiers' layout).
write_outputs = detection.write_outputs


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    columns = (("voc07_map50", "mAP@.5 (VOC07 11-point)"), ("voc_map50", "mAP@.5 (all-point)"),
               ("map", "mAP@[.5:.95]"))
    body = ("## Table 7\n\nObject detection mAP (%) on the test split at the end of training "
            "(the VOC 2007 metric: 11-point interpolated AP at IoU 0.5, objects marked "
            "difficult ignored; the all-point VOC 2010+ AP and COCO's mAP@[.5:.95] beside "
            "it).\n\n"
            + detection.table_rows(outcomes, columns, {k: (v,) for k, v in PAPER_MAP.items()},
                                   ["mAP@.5 (VOC07)"])
            + f"\nThe paper (Table 7; VOC 2007 test, 07+12 training): VGG-16 "
            f"{PAPER_MAP['vgg16']}, ResNet-101 {PAPER_MAP['resnet101']}; VOC 2012 test "
            f"(07++12): {PAPER_VOC12['vgg16']} and {PAPER_VOC12['resnet101']}.\n")
    findings = [f for f in [detection.comparison(outcomes, "voc07_map50", "VOC07 mAP@.5",
                                                 PAPER_MAP)] if f]
    rows = [{"label": o.label, "voc07_map50": detection.final(o, "voc07_map50"),
             "voc_map50": detection.final(o, "voc_map50"), "map": detection.final(o, "map"),
             "paper_map50": PAPER_MAP.get(o.label)} for o in outcomes]
    return Report("Table 7: Faster R-CNN on PASCAL VOC 2007 test", body, findings,
                  results={"table7": rows})
