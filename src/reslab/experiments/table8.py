"""Table 8: object detection on MS COCO val, Faster R-CNN with VGG-16 vs ResNet-101
(Appendix A: trained on the 80k train images, tested on the 40k val images; mAP@.5 and
COCO's mAP@[.5:.95], by pycocotools)."""

from __future__ import annotations

from reslab.experiments import detection
from reslab.experiments.report import Report
from reslab.experiments.sweep import RunOutcome, RunSpec, Settings

RECIPE = "detection"
DETECT_RECIPE = "coco"
DESCRIPTION = ("detection: Faster R-CNN (c4) mAP@.5 and mAP@[.5:.95] on COCO val, VGG-16 vs "
               "ResNet-101 (or --models) beside Table 8")

#: Table 8 (%, COCO val): (mAP@.5, mAP@[.5, .95]).
PAPER_MAP = {"vgg16": (41.5, 21.2), "resnet101": (48.4, 27.2)}


def plan(s: Settings) -> list[RunSpec]:
    return detection.plan_runs(s, DETECT_RECIPE)


def data_info(s: Settings) -> detection.DataInfo:
    return detection.data_info(s, DETECT_RECIPE)


#: results.json and report.md of a detection experiment (not the classifiers' layout).
write_outputs = detection.write_outputs


def report(s: Settings, outcomes: list[RunOutcome], data) -> Report:
    columns = (("map50", "mAP@.5"), ("map", "mAP@[.5:.95]"))
    body = ("## Table 8\n\nObject detection mAP (%) on the test split at the end of training, "
            "COCO's metrics by pycocotools (mAP@.5 and the mean over IoU 0.5:0.05:0.95).\n\n"
            + detection.table_rows(outcomes, columns, PAPER_MAP, [t for _, t in columns])
            + f"\nThe paper (Table 8; COCO val): VGG-16 {PAPER_MAP['vgg16'][0]} / "
            f"{PAPER_MAP['vgg16'][1]}, ResNet-101 {PAPER_MAP['resnet101'][0]} / "
            f"{PAPER_MAP['resnet101'][1]} (mAP@.5 / mAP@[.5:.95]).\n")
    findings = [f for f in (
        detection.comparison(outcomes, "map50", "mAP@.5",
                             {k: v[0] for k, v in PAPER_MAP.items()}),
        detection.comparison(outcomes, "map", "mAP@[.5:.95]",
                             {k: v[1] for k, v in PAPER_MAP.items()})) if f]
    rows = [{"label": o.label, "map50": detection.final(o, "map50"),
             "map": detection.final(o, "map"), "paper": PAPER_MAP.get(o.label)}
            for o in outcomes]
    return Report("Table 8: Faster R-CNN on MS COCO val", body, findings,
                  results={"table8": rows})
