"""Bad detection data (issue 16): every fault is one line naming the file, or with
skip_bad is skipped and counted; boxes outside their image are clipped or dropped and
counted; nothing else is lost (images without objects stay for evaluation)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

from reslab.detection import open_detection_data, write_coco, write_voc
from reslab.errors import ReslabError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SPEC = "synthetic-det:images=4,size=48,objects=2,seed=2"


@pytest.fixture
def voc(tmp_path) -> Path:
    """A 4-image VOC root (ids train_000000 .. train_000003), PNG images."""
    return write_voc(open_detection_data(SPEC, "train"), tmp_path / "voc", "trainval",
                     image_format="png")


@pytest.fixture
def coco(tmp_path) -> Path:
    write_coco(open_detection_data(SPEC, "train"), tmp_path / "coco", "val", image_format="png")
    return tmp_path / "coco"


def one_line_error(spec: str, split: str, match: str) -> str:
    with pytest.raises(ReslabError, match=match) as e:
        open_detection_data(spec, split)
    assert "\n" not in str(e.value)
    return str(e.value)


def skipped(spec: str, split: str, match: str):
    with pytest.warns(UserWarning, match=match):
        return open_detection_data(spec, split, skip_bad=True)


def xml(voc: Path, i: int = 1) -> Path:
    return voc / "Annotations" / f"train_{i:06d}.xml"


def test_truncated_and_malformed_xml(voc):
    text = xml(voc).read_text()
    xml(voc).write_text(text[: len(text) // 2])
    msg = one_line_error(str(voc), "trainval", "malformed or truncated XML")
    assert str(xml(voc)) in msg and "skip_bad" in msg
    data = skipped(str(voc), "trainval", r"skipped 1 bad entry")
    assert len(data) == 3
    xml(voc).write_text(text.replace("<xmin>", "<xmin>abc", 1))
    one_line_error(str(voc), "trainval", r"<xmin> is 'abc.*', not a number")
    xml(voc).write_bytes(b"")
    one_line_error(str(voc), "trainval", "no element found")


def test_entity_declarations_are_refused(voc):
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
            '<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">]><annotation>&y;</annotation>')
    xml(voc).write_text(bomb)
    msg = one_line_error(str(voc), "trainval", "declares a DOCTYPE or ENTITY")
    assert str(xml(voc)) in msg
    external = '<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation/>'
    xml(voc).write_text(external)
    one_line_error(str(voc), "trainval", "declares a DOCTYPE")


def test_unknown_class_is_an_error_or_a_skipped_object(voc):
    before = open_detection_data(str(voc), "trainval")
    n = len(before.target(1)["labels"])
    text = xml(voc).read_text()
    first = before.classes[before.target(1)["labels"][0] - 1]
    xml(voc).write_text(text.replace(f"<name>{first}</name>", "<name>unicorn</name>", 1))
    msg = one_line_error(str(voc), "trainval", "unknown class 'unicorn'")
    assert str(xml(voc)) in msg and "classes.txt" in msg
    data = skipped(str(voc), "trainval", "unknown class 'unicorn'")
    assert len(data) == 4 and len(data.target(1)["labels"]) == n - 1


def test_missing_image_and_missing_ids(voc):
    (voc / "JPEGImages" / "train_000002.png").unlink()
    msg = one_line_error(str(voc), "trainval", "image of train_000002 is missing")
    assert "JPEGImages/train_000002.png" in msg
    assert len(skipped(str(voc), "trainval", "skipped 1")) == 3
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("train_000000\nghost\n")
    one_line_error(str(voc), "trainval", r"split file names ghost but .*ghost\.xml does not "
                   "exist")
    assert len(skipped(str(voc), "trainval", "ghost")) == 1
    msg = one_line_error(str(voc), "test", r"no split 'test'.*splits there: trainval")


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(voc):
    # image 48x48; VOC 1-based: a box partly outside, one wholly outside, one of zero size
    text = xml(voc, 0).read_text()
    extra = "".join(
        f"<object><name>red-square</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in ((-5, 10, 20, 60), (60, 60, 70, 70), (5, 5, 4, 9)))
    xml(voc, 0).write_text(text.replace("</annotation>", extra + "</annotation>"))
    before = len(open_detection_data(SPEC, "train").target(0)["boxes"])
    with pytest.warns(UserWarning, match=r"clipped 1 boxes .* dropped 2 boxes .*"
                      r"train_000000\.xml"):
        data = open_detection_data(str(voc), "trainval")
    boxes = data.target(0)["boxes"]
    assert len(boxes) == before + 1 and boxes[-1].tolist() == [0, 9, 20, 48]


def test_images_without_objects_are_kept_for_evaluation(voc):
    text = xml(voc, 3).read_text()
    xml(voc, 3).write_text(text[: text.index("<object>")] + "</annotation>")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = open_detection_data(str(voc), "trainval")
    assert len(data) == 4 and not data.has_objects(3) and data.indices_with_objects() == [
        0, 1, 2]
    assert data[3][1]["boxes"].shape == (0, 4)


def test_image_unlike_its_annotation_or_corrupt_is_one_line_when_read(voc):
    data = open_detection_data(str(voc), "trainval")
    img = torch.zeros(3, 10, 12, dtype=torch.uint8)
    (voc / "JPEGImages" / "train_000001.png").write_bytes(encode_png(img).numpy().tobytes())
    with pytest.raises(ReslabError, match=r"is 12x10 but its annotation says 48x48"):
        data[1]
    (voc / "JPEGImages" / "train_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ReslabError, match=r"cannot decode image .*train_000001\.png"):
        data[1]


def test_voc_roots_with_other_classes_cannot_be_joined(voc, tmp_path):
    other = write_voc(open_detection_data("synthetic-det:images=2,size=48,classes=2", "train"),
                      tmp_path / "other", "trainval")
    one_line_error(f"{voc},{other}", "trainval", "have other classes")
    one_line_error(f"{voc},{tmp_path / 'nowhere'}", "trainval", "no such folder")


def test_truncated_or_wrong_coco_json(coco):
    ann = coco / "annotations" / "instances_val.json"
    text = ann.read_text()
    ann.write_text(text[: len(text) // 2])
    msg = one_line_error(str(coco), "val", r"malformed or truncated JSON")
    assert str(ann) in msg and "line" in msg
    ann.write_text(json.dumps({"images": []}))
    one_line_error(str(coco), "val", "not a COCO instances file")


def test_bad_coco_annotations_are_errors_or_skipped(coco):
    ann = coco / "annotations" / "instances_val.json"
    d = json.loads(ann.read_text())
    n = len(d["annotations"])
    d["annotations"][0]["bbox"] = [1, 2, "x", 4]
    d["annotations"][1]["category_id"] = 99
    ann.write_text(json.dumps(d))
    msg = one_line_error(str(coco), "val", r"annotations\[0\] has bbox \[1, 2, 'x', 4\]")
    assert str(ann) in msg
    data = skipped(str(coco), "val", "skipped 2 bad entries")
    assert sum(len(data.target(i)["labels"]) for i in range(len(data))) == n - 2


def test_missing_coco_image(coco):
    (coco / "val" / "train_000001.png").unlink()
    one_line_error(str(coco), "val", r"image train_000001\.png \(id 2\) is missing")
    assert len(skipped(str(coco), "val", "is missing")) == 3


def test_neither_layout_nor_split(tmp_path, coco):
    (tmp_path / "empty").mkdir()
    one_line_error(str(tmp_path / "empty"), "val", "neither a VOC root")
    one_line_error(str(coco), "train", "neither a VOC root")  # no such COCO split
    one_line_error(str(coco), "../val", "bad split name")
