"""Detection data, predict and eval outputs as a careless or hostile user meets them
(issue 27): no input is ever overwritten, VOC reads images as its devkit does, bad
numbers and bad images are one line (or a counted skip with --skip-bad), paths never
leave the data set, and every hint names a flag of the command that ran."""

from __future__ import annotations

import errno
import struct
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








# ---- 8. numbers and nesting: one line ----------------------------------------------------------








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






# ---- 10. paths never leave the data set ------------------------------------------------






# ---- 11. hints that fit the command ----------------------------------------------------








