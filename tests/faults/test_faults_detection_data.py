"""Detection data, predict and eval outputs as a careless or hostile user meets them
(issue 27): no input is ever overwritten, VOC reads images as its devkit does, bad
numbers and bad images are one line (or a counted skip with --skip-bad), paths never
leave the data set, and every hint names a flag of the command that ran."""

from __future__ import annotations

import errno
import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg

from reslab.cli import main
from reslab.detection import create_detector, open_detection_data, write_coco, write_voc
from reslab.errors import ReslabError
from reslab.train.checkpoint import Checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SPEC = "synthetic-det:images=4,size=48,objects=2,seed=2"
CPU = ["--device", "cpu", "--precision", "fp32"]


# ---- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def voc(tmp_path) -> Path:
    """A 4-image VOC root (ids train_000000 .. train_000003), PNG images."""
    return write_voc(open_detection_data(SPEC, "train"), tmp_path / "voc", "trainval",
                     image_format="png")


@pytest.fixture
def voc_jpg(tmp_path) -> Path:
    """The same as JPEGs, as the VOC devkit has them."""
    return write_voc(open_detection_data(SPEC, "train"), tmp_path / "vocj", "trainval")


@pytest.fixture
def coco(tmp_path) -> Path:
    write_coco(open_detection_data(SPEC, "train"), tmp_path / "coco", "val", image_format="png")
    return tmp_path / "coco"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny untrained detector for the synthetic set's 4 classes (64-pixel test scale)."""
    classes = open_detection_data(SPEC, "train").classes
    det = create_detector("resnet18", "c4", num_classes=len(classes) + 1, min_size=64,
                          max_size=64, rpn_post_nms_top_n_test=4)
    path = tmp_path_factory.mktemp("det") / "last.pt"
    Checkpoint(model_spec=det.reslab_spec.to_dict(), model=det.state_dict(),
               preprocess={"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
               classes=list(classes)).save(path)
    return path


def reslab(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, match: str) -> str:
    """The CLI's error convention: exit 2, one line, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def one_line_error(spec: str, split: str, match: str, **kw) -> str:
    with pytest.raises(ReslabError, match=match) as e:
        open_detection_data(spec, split, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def xml(voc: Path, i: int = 1) -> Path:
    return voc / "Annotations" / f"train_{i:06d}.xml"


def coco_json(coco: Path) -> Path:
    return coco / "annotations" / "instances_val.json"


def jpeg_bomb() -> bytes:
    """A tiny JPEG whose SOF0 header is patched to say 20000x20000."""
    data = bytearray(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy().tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    return bytes(data)


# ---- 1-3. data loss ------------------------------------------------------------------------


def test_predict_draw_into_the_inputs_folder_keeps_the_input(tmp_path, voc, weights, capsys):
    photo = tmp_path / "photos" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes((voc / "JPEGImages" / "train_000000.png").read_bytes())
    before = photo.read_bytes()
    code, out, err = reslab(capsys, "detect", "predict", "--weights", weights, photo,
                            "--draw", photo.parent, "--score-threshold", "0", *CPU)
    assert code == 0, err
    assert photo.read_bytes() == before
    drawn = photo.parent / "photo-boxes.png"
    assert drawn.is_file() and f"drawn: {drawn}" in out
    # a second input of the same stem elsewhere gets a name of its own, no input is touched
    other = tmp_path / "more" / "photo.png"
    other.parent.mkdir()
    other.write_bytes(before)
    code, out, err = reslab(capsys, "detect", "predict", "--weights", weights, photo, other,
                            "--draw", other.parent, *CPU)
    assert code == 0, err
    assert photo.read_bytes() == other.read_bytes() == before
    assert sorted(p.name for p in other.parent.iterdir()) == [
        "photo-boxes-2.png", "photo-boxes.png", "photo.png"]


def test_eval_predictions_never_replace_an_input(tmp_path, coco, weights, capsys):
    before = weights.read_bytes()
    for flags in (["--predictions", weights],
                  ["--predictions", tmp_path / "p.json", "--coco-gt", weights]):
        code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                              "--split", "val", "--no-progress", *CPU, *flags)
        one_line(code, err, "is the --weights checkpoint")
    assert weights.read_bytes() == before
    link = tmp_path / "link.pt"
    link.symlink_to(weights)
    code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                          "--split", "val", "--predictions", link, *CPU)
    one_line(code, err, "is the --weights checkpoint")
    assert weights.read_bytes() == before
    same = tmp_path / "x.json"
    code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                          "--split", "val", "--predictions", same, "--coco-gt", same, *CPU)
    one_line(code, err, "--predictions and --coco-gt both name")
    assert not same.exists()
    ann = coco_json(coco)
    text = ann.read_text()
    code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                          "--split", "val", "--predictions", tmp_path / "p.json", "--coco-gt",
                          ann, "--no-progress", *CPU)
    one_line(code, err, "is an annotation file of --data")
    assert ann.read_text() == text and not (tmp_path / "p.json").exists()
    image = coco / "val" / "train_000000.png"
    data = image.read_bytes()
    code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                          "--split", "val", "--predictions", image, "--no-progress", *CPU)
    one_line(code, err, "is an image of --data")
    assert image.read_bytes() == data
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for target in (os.devnull, fifo):
        code, _, err = reslab(capsys, "detect", "eval", "--weights", weights, "--data", coco,
                              "--split", "val", "--predictions", target, *CPU)
        one_line(code, err, "is not a regular file (a device, FIFO or socket)")
    assert Path(os.devnull).is_char_device() and fifo.is_fifo()


def test_full_disk_at_the_first_evaluation_says_what_was_written(tmp_path, monkeypatch):
    import reslab.atomic_write as aw
    import reslab.train.checkpoint as ck
    from reslab.train.runlog import RunLog

    real = ck.atomic_torch_save

    def full_at_last_pt(path, obj):
        if Path(path).name != "last.pt":
            return real(path, obj)

        def no_space(f):
            raise OSError(errno.ENOSPC, "No space left on device")

        return aw.atomic_write(path, no_space)

    monkeypatch.setattr(ck, "atomic_torch_save", full_at_last_pt)
    out = tmp_path / "run"
    out.mkdir()
    log = RunLog(out, {"precision": "fp32", "model_spec": {"name": "x"}}, [], "t", 10, 0,
                 progress=False, tensorboard=False)
    record = {"iteration": 2, "train_error": 0.5, "train_loss": 1.0, "test_error": 0.5,
              "test_loss": 1.0, "eval_split": "test", "images_per_sec": 1.0}
    checkpoint = Checkpoint(model_spec={"name": "x"}, model={"w": torch.zeros(1)},
                            preprocess={"mean": torch.zeros(3, 1, 1)}, classes=["a"])
    with pytest.raises(ReslabError) as e:
        log.on_eval(record, checkpoint, improved=True)
    msg = str(e.value)
    assert "\n" not in msg and "nothing was written" not in msg
    assert "no space left on device writing" in msg and "no last.pt was written" in msg
    assert "did write metrics.jsonl" in msg and "best.pt" in msg
    assert (out / "best.pt").is_file() and (out / "metrics.jsonl").is_file()
    assert not (out / "last.pt").exists()


# ---- 4-5. silent wrong answers ---------------------------------------------------------------


def test_voc_reads_the_ids_image_not_a_stale_filename(voc):
    a = xml(voc, 2)
    a.write_text(a.read_text().replace("<filename>train_000002.png</filename>",
                                       "<filename>train_000001.png</filename>"))
    with pytest.warns(UserWarning, match=r"1 annotation names another image in <filename> "
                      r".*train_000002\.xml names 'train_000001\.png'.*VOC devkit"):
        data = open_detection_data(str(voc), "trainval")
    assert data.image_info(2)["path"] == str(voc / "JPEGImages" / "train_000002.png")
    assert data.image_info(1)["path"] == str(voc / "JPEGImages" / "train_000001.png")


def test_a_devkit_layout_reads_without_a_warning(voc_jpg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = open_detection_data(str(voc_jpg), "trainval")
    assert [Path(data.image_info(i)["path"]).name for i in range(4)] == [
        f"train_{i:06d}.jpg" for i in range(4)]
    assert len(data[3][0].shape) == 3


def test_duplicate_coco_category_names_are_refused(coco):
    d = json.loads(coco_json(coco).read_text())
    d["categories"][1]["name"] = d["categories"][0]["name"]
    coco_json(coco).write_text(json.dumps(d))
    msg = one_line_error(str(coco), "val", "appears twice")
    assert f"category name {d['categories'][0]['name']!r} appears twice" in msg
    one_line_error(str(coco), "val", "appears twice", skip_bad=True)


# ---- 8. numbers and nesting: one line ----------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1" + "0" * 5000])
def test_voc_sizes_that_are_not_numbers_of_pixels(voc, value):
    text = xml(voc).read_text()
    xml(voc).write_text(text.replace("<width>48</width>", f"<width>{value}</width>"))
    msg = one_line_error(str(voc), "trainval", r"<width> is .*not an image side in pixels")
    assert str(xml(voc)) in msg and len(msg) < 600
    with pytest.warns(UserWarning, match="skipped 1 bad entry"):
        assert len(open_detection_data(str(voc), "trainval", skip_bad=True)) == 3


def test_coco_numbers_too_large_for_a_float(coco):
    huge = "1" + "0" * 400  # written as an integer: float() of it overflows
    d = json.loads(coco_json(coco).read_text())
    n = len(d["annotations"])
    d["annotations"][0]["bbox"][0] = "@"
    d["annotations"][1]["area"] = "@"
    coco_json(coco).write_text(json.dumps(d).replace('"@"', huge))
    with pytest.warns(UserWarning, match=r"dropped 1 boxes"):  # its x is not finite
        data = open_detection_data(str(coco), "val")
    assert sum(len(data.target(i)["labels"]) for i in range(len(data))) == n - 1
    d = json.loads(coco_json(coco).read_text().replace(huge, "1"))
    d["images"][0]["width"] = int(huge)
    coco_json(coco).write_text(json.dumps(d))
    one_line_error(str(coco), "val", r"images\[0\] needs .*'width' and 'height' in 1\.\.")
    d["images"][0]["width"] = 48
    d["categories"][0]["id"] = 2**70
    coco_json(coco).write_text(json.dumps(d))
    one_line_error(str(coco), "val", r"categories\[0\] needs an integer 'id'")


def test_coco_json_with_endless_digits_or_nesting(coco):
    d = json.loads(coco_json(coco).read_text())
    text = json.dumps(d)
    coco_json(coco).write_text(text.replace('"id": 1,', '"id": ' + "1" * 5000 + ",", 1))
    msg = one_line_error(str(coco), "val", r"cannot parse .*4300 digits")
    assert len(msg) < 400
    depth = 100_000
    d["info"] = "@"
    coco_json(coco).write_text(json.dumps(d).replace('"@"', "[" * depth + "]" * depth))
    one_line_error(str(coco), "val", r"cannot parse .*nested too deeply", skip_bad=True)


@pytest.mark.parametrize("command", [["detect", "train", "--data", SPEC],
                                     ["train", "--model", "resnet8", "--data", "synthetic"]])
def test_seed_beyond_64_bits_is_one_line(tmp_path, capsys, command):
    code, _, err = reslab(capsys, *command, "--seed", 2**70, "--out", tmp_path / "run",
                          "--iterations", "1", "--device", "cpu")
    one_line(code, err, "--seed must be an integer in 0..4294967295")
    assert not (tmp_path / "run").exists()


# ---- 9. --skip-bad skips undecodable images ------------------------------------------------------


def spoil(voc_jpg: Path) -> None:
    """Images 1-3 of the JPEG VOC root: truncated, empty, a decompression bomb."""
    folder = voc_jpg / "JPEGImages"
    good = (folder / "train_000001.jpg").read_bytes()
    (folder / "train_000001.jpg").write_bytes(good[: len(good) // 2])
    (folder / "train_000002.jpg").write_bytes(b"")
    (folder / "train_000003.jpg").write_bytes(jpeg_bomb())


def test_eval_skip_bad_skips_undecodable_images(voc_jpg, weights, capsys):
    spoil(voc_jpg)
    args = ("detect", "eval", "--weights", weights, "--data", voc_jpg, "--split", "trainval",
            "--json", "--no-progress", *CPU)
    code, _, err = reslab(capsys, *args)
    line = one_line(code, err, "train_000001.jpg")
    assert line.endswith("or pass skip_bad=True (--skip-bad) to skip it")  # eval has it
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable images \(skip_bad\); 1 of 4"):
        code, out, err = reslab(capsys, *args, "--skip-bad")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["images"] == 1 and metrics["skipped_images"] == 3


def test_training_skip_bad_takes_the_next_readable_image(voc_jpg):
    from reslab.detection.config import DetectConfig
    from reslab.detection.trainer import DetectionSource
    from reslab.engine import make_engine
    from reslab.train.distributed import World

    spoil(voc_jpg)
    cfg = DetectConfig(data=str(voc_jpg), train_split="trainval", val_split="trainval",
                       batch_size=4, iterations=1, device="cpu", out="unused")
    source = DetectionSource(cfg, make_engine("cpu", "fp32"), World())
    with pytest.raises(ReslabError, match="cannot decode image"):
        source.load(0)
    cfg = DetectConfig(**{**cfg.to_dict(), "skip_bad": True})
    source = DetectionSource(cfg, make_engine("cpu", "fp32"), World())
    with pytest.warns(UserWarning, match="the next readable image stands in"):
        batch = source.load(0)
    assert len(batch) == 4 and all(img.shape == (3, 48, 48) for img, _ in batch)
    first = source.train.image(0)
    assert all(torch.equal(img, first) or torch.equal(img, first.flip(-1)) for img, _ in batch)


# ---- 10. paths never leave the data set ------------------------------------------------


def test_voc_paths_leading_outside_are_skipped_and_counted(tmp_path, voc):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes((voc / "JPEGImages" / "train_000000.png").read_bytes())
    # an absolute <filename>: the id's own image is read, never the other file
    a = xml(voc, 0)
    a.write_text(a.read_text().replace("<filename>train_000000.png</filename>",
                                       f"<filename>{secret}</filename>"))
    # a link in JPEGImages to a file outside the root
    (voc / "JPEGImages" / "train_000001.png").unlink()
    (voc / "JPEGImages" / "train_000001.png").symlink_to(secret)
    # an id with ../ in the split file, with an annotation and an image for it outside
    (outside / "x.xml").write_text(xml(voc, 2).read_text())
    (outside / "x.png").write_bytes(secret.read_bytes())
    split = voc / "ImageSets" / "Main" / "trainval.txt"
    split.write_text(split.read_text() + f"../../../{outside.name}/x\n")
    # a link in Annotations to an annotation outside the root
    (outside / "y.xml").write_text(xml(voc, 3).read_text())
    xml(voc, 3).unlink()
    xml(voc, 3).symlink_to(outside / "y.xml")
    with pytest.warns(UserWarning, match=r"skipped 3 images whose path leads outside the "
                      r"data set"):
        data = open_detection_data(str(voc), "trainval")
    paths = [data.image_info(i)["path"] for i in range(len(data))]
    assert len(data) == 2 and all(str(voc) in p for p in paths)
    assert paths[0] == str(voc / "JPEGImages" / "train_000000.png")


def test_coco_file_names_leading_outside_are_skipped_and_counted(tmp_path, coco):
    d = json.loads(coco_json(coco).read_text())
    (tmp_path / "outside.png").write_bytes((coco / "val" / "train_000000.png").read_bytes())
    d["images"][0]["file_name"] = "../../outside.png"
    d["images"][1]["file_name"] = str(tmp_path / "outside.png")
    (coco / "val" / "link.png").symlink_to(tmp_path / "outside.png")
    d["images"][2]["file_name"] = "link.png"
    coco_json(coco).write_text(json.dumps(d))
    with pytest.warns(UserWarning, match=r"skipped 3 images whose path leads outside"):
        data = open_detection_data(str(coco), "val")
    assert len(data) == 1 and data.image_info(0)["path"] == str(
        coco / "val" / "train_000003.png")


# ---- 11. hints that fit the command ----------------------------------------------------


def test_detect_predict_hints_only_its_own_flags(tmp_path, weights, capsys, monkeypatch):
    from reslab.data.decode import MAX_PIXELS_ENV

    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # the default limit; restored after the test
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, _, err = reslab(capsys, "detect", "predict", "--weights", weights, fifo, *CPU)
    line = one_line(code, err, "is a FIFO (named pipe), not an image file")
    assert "--skip" not in line
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_bomb())
    code, _, err = reslab(capsys, "detect", "predict", "--weights", weights, bomb, *CPU)
    one_line(code, err, "--max-image-pixels N")  # a flag detect predict has:
    code, _, err = reslab(capsys, "detect", "predict", "--weights", weights, bomb,
                          "--max-image-pixels", "1000", *CPU)
    one_line(code, err, "over the limit of 1,000")


def test_a_cifar_checkpoint_as_backbone_weights_suggests_no_cifar_backbone(tmp_path):
    from reslab.models.registry import create_model

    net = create_model("resnet8", num_classes=10)
    Checkpoint(model_spec=net.reslab_spec.to_dict(), model=net.state_dict(),
               preprocess={"mean": torch.zeros(3, 32, 32)}, classes=list("abcdefghij")).save(
        tmp_path / "cifar.pt")
    with pytest.raises(ReslabError, match="classifier trained with the CIFAR recipe") as e:
        create_detector("resnet18", "c4", num_classes=3, weights=tmp_path / "cifar.pt")
    assert "--backbone resnet8" not in str(e.value) and "ImageNet" in str(e.value)


def test_a_fifo_annotation_is_named_as_such(voc):
    xml(voc).unlink()
    os.mkfifo(xml(voc))
    msg = one_line_error(str(voc), "trainval", r"train_000001\.xml is a FIFO \(named pipe\), "
                         "not an annotation file")
    assert "does not exist" not in msg and "--skip-corrupt" not in msg
    with pytest.warns(UserWarning, match="skipped 1 bad entry"):
        assert len(open_detection_data(str(voc), "trainval", skip_bad=True)) == 3


@pytest.mark.parametrize("spec", [",,", " , "])
def test_data_of_only_commas_names_no_folder(spec):
    msg = one_line_error(spec, "test", "names no folder")
    assert not msg.startswith(" ")
