"""Detection data: the synthetic set, VOC and COCO layouts (written and read back), the
coordinate conventions, flips and collation (reslab.detection, issue 16)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

from reslab.detection import (
    VOC_CLASSES,
    detection_collate,
    hflip,
    open_detection_data,
    synthetic_detection,
    write_coco,
    write_voc,
)
from reslab.errors import ReslabError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SPEC = "synthetic-det:images=6,size=64,objects=3,seed=3"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path / "home"))


def same_annotations(a, b) -> None:
    assert a.classes == b.classes and len(a) == len(b)
    for i in range(len(a)):
        ta, tb = a.target(i), b.target(i)
        assert torch.equal(ta["boxes"], tb["boxes"]), i
        assert torch.equal(ta["labels"], tb["labels"]) and torch.equal(
            ta["difficult"], tb["difficult"])


def test_synthetic_is_deterministic_and_its_splits_differ():
    a = open_detection_data(SPEC, "train")
    b = open_detection_data(SPEC, "trainval")
    test = open_detection_data(SPEC, "test")
    same_annotations(a, b)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    assert a.fingerprint() == b.fingerprint() != test.fingerprint()
    assert not any(torch.equal(a[i][0], test[j][0]) for i in range(6) for j in range(6))
    assert len(a) == 6 and a.classes == ["red-square", "green-disc", "blue-triangle",
                                         "yellow-cross"]
    other = open_detection_data(SPEC.replace("seed=3", "seed=4"), "train")
    assert other.fingerprint() != a.fingerprint()


def test_synthetic_boxes_are_exact_and_do_not_overlap():
    data = synthetic_detection("train", images=20, size=64, objects=4, classes=8, seed=1)
    assert len(data.classes) == len(set(data.classes)) == 8
    for i in range(len(data)):
        img, t = data[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
        b = t["boxes"]
        assert 1 <= len(b) <= 4 and t["labels"].min() >= 1 and t["labels"].max() <= 8
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all()
        assert (b[:, 2:] > b[:, :2]).all()
        for j in range(len(b)):
            for k in range(j):
                x1, y1 = torch.maximum(b[j, :2], b[k, :2])
                x2, y2 = torch.minimum(b[j, 2:], b[k, 2:])
                assert x2 <= x1 or y2 <= y1
        assert data.has_objects(i) and t["image_id"] == i + 1


def test_synthetic_square_fills_its_box():
    # a square's box is exactly its painted pixels: inside, the class colour (red)
    data = synthetic_detection("train", images=30, size=64, classes=1, seed=0)
    img, t = data[0]
    x1, y1, x2, y2 = (int(v) for v in t["boxes"][0])
    inside = img[:, y1:y2, x1:x2].float()
    assert inside[0].mean() > 170 and inside[1].mean() < 90
    ring = img[:, max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1].float()
    assert ring[0].mean() < inside[0].mean()


def _image_folder_tar(tmp_path: Path) -> Path:
    """A tiny CIFAR-like image folder (.tar.gz): class k's images are k * 100 in red."""
    src = tmp_path / "folder"
    for split in ("train", "test"):
        for k, cls in enumerate(("ant", "bee", "cow")):
            d = src / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                img = torch.zeros(3, 32, 32, dtype=torch.uint8)
                img[0] = 100 * k + i
                (d / f"{i}.png").write_bytes(encode_png(img).numpy().tobytes())
    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=".")
    return path


def test_synthetic_pastes_source_images_with_their_classes(tmp_path):
    path = _image_folder_tar(tmp_path)
    data = open_detection_data(f"synthetic-det:images=5,size=96,source={path}", "test")
    assert data.classes == ["ant", "bee", "cow"]
    for i in range(len(data)):
        img, t = data[i]
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = (int(v) for v in box)
            patch = img[:, y1:y2, x1:x2].float()
            assert abs(patch[0].mean() - 100 * (label - 1)) <= 2  # the pasted class's red
            assert patch[1].max() == 0
    two = open_detection_data(f"synthetic-det:images=5,size=96,classes=2,source={path}", "train")
    assert two.classes == ["ant", "bee"]


@pytest.mark.parametrize("spec", ["synthetic-det:images=0", "synthetic-det:size=8",
                                  "synthetic-det:colour=3", "synthetic-det:images=x",
                                  "synthetic-det:classes=17", "synthetic-det:images"])
def test_bad_synthetic_specs_are_one_line(spec):
    with pytest.raises(ReslabError, match="synthetic-det") as e:
        open_detection_data(spec, "train")
    assert "\n" not in str(e.value)


def test_voc_round_trip(tmp_path):
    train = open_detection_data(SPEC, "train")
    test = open_detection_data(SPEC, "test")
    root = tmp_path / "voc"
    write_voc(train, root, "trainval", image_format="png")
    write_voc(test, root, "test", image_format="png")
    assert (root / "classes.txt").read_text().split() == train.classes
    back = open_detection_data(str(root), "trainval")
    assert back.layout == "voc" and back.name == f"voc:{root} trainval"
    same_annotations(train, back)
    for i in range(len(train)):
        assert torch.equal(back[i][0], train[i][0])  # PNG: lossless
        info = back.image_info(i)
        assert info["image_id"] == i + 1 and (info["width"], info["height"]) == (64, 64)
        assert Path(info["path"]).is_file()
    same_annotations(test, open_detection_data(str(root), "test"))


def voc_root(root: Path, objects: str, size=(40, 30), vid="000001") -> Path:
    """A one-image VOC root with VOC's own classes and the given <object> XML."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    w, h = size
    img = torch.full((3, h, w), 90, dtype=torch.uint8)
    (root / "JPEGImages" / f"{vid}.png").write_bytes(encode_png(img).numpy().tobytes())
    (root / "Annotations" / f"{vid}.xml").write_text(
        f"<annotation><filename>{vid}.png</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>")
    with open(root / "ImageSets" / "Main" / "trainval.txt", "a") as f:
        f.write(vid + "\n")
    return root


def obj(name: str, box, difficult=0) -> str:
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>")


def test_voc_coordinates_difficult_and_classes(tmp_path):
    # VOC's 1-based inclusive pixels (1..10, 1..20) -> continuous 0-based [0, 0, 10, 20]
    root = voc_root(tmp_path / "v", obj("dog", (1, 1, 10, 20)) + obj("person", (5, 6, 7, 8), 1))
    data = open_detection_data(str(root), "trainval")
    assert data.classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    t = data.target(0)
    assert t["boxes"].tolist() == [[0, 0, 10, 20], [4, 5, 7, 8]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1,
                                    VOC_CLASSES.index("person") + 1]
    assert t["difficult"].tolist() == [False, True]
    assert data[0][0].shape == (3, 30, 40)


def test_voc_union_of_roots(tmp_path):
    a = voc_root(tmp_path / "VOC2007", obj("cat", (1, 1, 5, 5)))
    b = voc_root(tmp_path / "VOC2012", obj("cow", (2, 2, 9, 9)))
    voc_root(b, obj("cow", (3, 3, 9, 9)), vid="000002")
    data = open_detection_data(f"{a},{b}", "trainval")
    assert len(data) == 3 and data.name == f"voc:{a},{b} trainval"
    assert [data.image_info(i)["image_id"] for i in range(3)] == [1, 2, 3]
    assert data.image_info(0)["path"] != data.image_info(1)["path"]
    assert [data.target(i)["labels"].item() for i in range(3)] == [8, 10, 10]


def test_coco_round_trip(tmp_path):
    train = open_detection_data(SPEC, "train")
    ann = write_coco(train, tmp_path / "coco", "train2017", image_format="png")
    assert ann == tmp_path / "coco" / "annotations" / "instances_train2017.json"
    back = open_detection_data(str(tmp_path / "coco"), "train2017")
    assert back.layout == "coco"
    same_annotations(train, back)
    assert all(torch.equal(back[i][0], train[i][0]) for i in range(len(train)))


def coco_root(tmp_path: Path, annotations, categories=None, images=None) -> Path:
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    images = images or [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 3, "file_name": "b.png", "width": 40, "height": 30}]
    for im in images:
        img = torch.zeros(3, im["height"], im["width"], dtype=torch.uint8)
        (root / "val" / im["file_name"]).write_bytes(encode_png(img).numpy().tobytes())
    categories = categories or [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]
    (root / "val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_coco_ids_crowd_and_images_without_objects(tmp_path):
    root = coco_root(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [1, 2, 10, 5], "area": 33.0,
         "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1},
    ])
    data = open_detection_data(str(root), "val")
    assert data.classes == ["person", "dog"] and data.category_ids == [1, 18]
    # ordered by image id: 3 (no objects, kept for evaluation) then 7
    assert [data.image_info(i)["image_id"] for i in range(2)] == [3, 7]
    assert len(data.target(0)["boxes"]) == 0 and not data.has_objects(0)
    t = data.target(1)
    assert t["boxes"].tolist() == [[1, 2, 11, 7], [0, 0, 40, 30]]
    assert t["labels"].tolist() == [2, 1] and t["difficult"].tolist() == [False, True]
    assert data.records[1].area.tolist() == [33.0, 1200.0]
    assert data.has_objects(1) and data.indices_with_objects() == [1]
    # crowd-only image: not trained on
    only_crowd = coco_root(tmp_path / "x", [
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 3], "iscrowd": 1}])
    assert open_detection_data(str(only_crowd), "val").indices_with_objects() == []


def test_hflip_and_collate():
    img = torch.arange(2 * 3 * 5, dtype=torch.uint8).reshape(2, 3, 5)
    target = {"boxes": torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "labels": torch.tensor([4]),
              "difficult": torch.tensor([False]), "image_id": 9}
    f_img, f_t = hflip(img, target)
    assert torch.equal(f_img, img.flip(-1))
    assert f_t["boxes"].tolist() == [[3.0, 1.0, 5.0, 3.0]]
    assert f_t["labels"] is target["labels"] and f_t["image_id"] == 9
    assert target["boxes"].tolist() == [[0.0, 1.0, 2.0, 3.0]]  # input untouched
    back_img, back_t = hflip(f_img, f_t)
    assert torch.equal(back_img, img) and torch.equal(back_t["boxes"], target["boxes"])
    images, targets = detection_collate([(img, target), (f_img, f_t)])
    assert images[1] is f_img and targets[0] is target and len(targets) == 2


def test_targets_are_fresh_and_subset_fingerprint(tmp_path):
    data = open_detection_data(SPEC, "train")
    t = data.target(0)
    t["boxes"].add_(5)
    assert not torch.equal(t["boxes"], data.target(0)["boxes"])
    sub = data.subset([2, 0])
    assert len(sub) == 2 and torch.equal(sub[1][0], data[0][0])
    assert sub.fingerprint() != data.fingerprint()
    f = data.fingerprint()
    data.records[0].boxes[0, 0] += 1
    assert data.fingerprint() != f
