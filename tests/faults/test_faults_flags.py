"""Flags that would do nothing, or something other than asked (issue 17, items 2 and 3):
refused on one line before anything runs; bad sizes are refused when parsed, before any
allocation; a resume in another precision is recorded as such."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from reslab import create_model
from reslab.cli import main
from reslab.interop import CHECKPOINT_FORMAT
from tiny_imagenet import SMALL, make_tiny_imagenet

SYNTH = "synthetic:256:128"
TRAIN = ["--model", "resnet8", "--data", SYNTH, "--batch-size", "32", "--device", "cpu",
         "--no-progress"]


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reslab {command}: error: "), err
    return lines[0]


def _usage_error(capsys, argv: list[str]) -> str:
    """argparse's refusal: exit status 2, the usage and one `error:` line, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def reslab_checkpoint(tmp_path):
    """A minimal reslab checkpoint (format, model spec, weights) of resnet8."""
    model = create_model("resnet8")
    path = tmp_path / "net.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model_spec": model.reslab_spec.to_dict(),
                "model": model.state_dict()}, path)
    return path


# ------------------------------------------------------------- --classes beyond the data


def test_classes_beyond_the_folder_is_refused(tmp_path, capsys):
    root = make_tiny_imagenet(tmp_path / "inet", classes=3, train=2, val=1)
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "imagenet", "--model", "resnet8", "--data", str(root),
               "--classes", "1000", "--out", str(out), "--iterations", "1", "--batch-size",
               "2", "--workers", "0", "--device", "cpu", "--no-progress", *SMALL])
    line = _one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and "--classes 1000" in line and "has only 3 class folders" in line
    assert not (out / "run.json").exists()  # never recorded as a 1000-class run


# -------------------------------------------------------- flags that do nothing: refused


@pytest.mark.parametrize("argv, message", [
    (["table2", "--depth", "32"], "--depth applies to shortcuts only"),
    (["figure1", "--with-1202"], "--with-1202 applies to figure6 and table6 only"),
    (["table6", "--with-1202", "--models", "resnet8"], "--with-1202 adds a net to the paper's"),
    (["table6", "--with-plain110"], "--with-plain110 applies to figure6 only"),
], ids=["depth-table2", "1202-figure1", "1202-with-models", "plain110-table6"])
def test_reproduce_flags_that_do_not_apply(tmp_path, capsys, argv, message):
    out = tmp_path / "sweep"
    rc = main(["reproduce", *argv, "--out", str(out), "--data", "synthetic:32:16", "--device",
               "cpu", "--budget", "0.0001", "--batch-size", "8", "--eval-points", "1",
               "--no-progress"])  # were it not refused: a few seconds of training
    assert rc == 2 and message in _one_error_line(capsys.readouterr().err, "reproduce")
    assert not out.exists()


def test_compile_mode_without_compile_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *TRAIN, "--out", str(out), "--iterations", "1", "--compile-mode",
               "max-autotune"])
    line = _one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and "--compile-mode max-autotune takes effect with --compile" in line
    assert not out.exists()


def test_epochs_with_iterations_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *TRAIN, "--out", str(out), "--iterations", "3", "--epochs", "1"])
    line = _one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and "--epochs and --iterations both set the run's length" in line
    assert not out.exists()


def test_resume_with_iterations_replaces_the_epochs(tmp_path):
    """A run started with --epochs, resumed with --iterations N, ends at N (the saved
    --epochs used to win silently)."""
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--out", str(out), "--epochs", "0.25"]) == 0  # 2 iterations
    assert json.loads((out / "run.json").read_text())["finished_iteration"] == 2
    assert main(["train", "--resume", "--out", str(out), "--iterations", "4",
                 "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["finished_iteration"] == 4 and info["config"]["epochs"] is None


@pytest.mark.parametrize("flag", [["--num-classes", "7"], ["--shortcut", "B"],
                                  ["--torchvision-stride"]],
                         ids=["num-classes", "shortcut", "torchvision-stride"])
@pytest.mark.parametrize("model", ["auto", "resnet8"])
def test_export_flags_for_a_reslab_checkpoint_are_refused(reslab_checkpoint, capsys, flag,
                                                          model):
    out = reslab_checkpoint.with_name("x.safetensors")
    rc = main(["export", model, "--weights", str(reslab_checkpoint), "--format",
               "safetensors", "--out", str(out), *flag])
    line = _one_error_line(capsys.readouterr().err, "export")
    assert rc == 2 and f"{flag[0]} does not apply to {reslab_checkpoint}" in line
    assert not out.exists()


def test_export_num_classes_that_agrees_is_accepted(reslab_checkpoint):
    out = reslab_checkpoint.with_name("x.safetensors")
    assert main(["export", "--weights", str(reslab_checkpoint), "--format", "safetensors",
                 "--out", str(out), "--num-classes", "10"]) == 0
    assert out.is_file()


# ----------------------------------------------------------------- export --out targets


@pytest.fixture(params=["device", "link-to-dev-null"])
def special_out(request, tmp_path):
    """A character device (as /dev/null is) in tmp_path, or a link to /dev/null: never
    /dev/null itself, so that a regression cannot replace this machine's."""
    path = tmp_path / "null"
    if request.param == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError):
            pytest.skip("creating a device node needs root")
    else:
        path.symlink_to("/dev/null")
    return path


def test_export_out_to_a_device_is_refused_and_kept(reslab_checkpoint, special_out, capsys):
    before = os.lstat(special_out)
    rc = main(["export", "--weights", str(reslab_checkpoint), "--format", "safetensors",
               "--out", str(special_out)])
    line = _one_error_line(capsys.readouterr().err, "export")
    assert rc == 2 and f"--out {special_out} is not a regular file" in line
    after = os.lstat(special_out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino,
                                                            before.st_rdev)
    assert stat.S_ISCHR(os.stat(special_out).st_mode)


def test_export_out_fifo_is_refused_and_kept(reslab_checkpoint, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc = main(["export", "--weights", str(reslab_checkpoint), "--format", "safetensors",
               "--out", str(fifo)])
    assert rc == 2 and "is not a regular file" in _one_error_line(capsys.readouterr().err,
                                                                  "export")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_export_model_refuses_a_fifo(tmp_path):
    from reslab.errors import ReslabError
    from reslab.interop import export_model

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ReslabError, match="not a regular file"):
        export_model(create_model("resnet8"), fifo, "onnx", 32)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_export_out_with_a_trailing_slash_is_a_folder(reslab_checkpoint, tmp_path, capsys):
    folder = tmp_path / "exports" / "new"
    assert main(["export", "--weights", str(reslab_checkpoint), "--format", "safetensors",
                 "--out", f"{folder}/"]) == 0
    assert [p.name for p in folder.iterdir()] == ["resnet8.safetensors"]
    assert not (tmp_path / "exports" / "new.safetensors").exists()
    assert str(folder / "resnet8.safetensors") in capsys.readouterr().out


def test_export_out_with_a_trailing_slash_on_a_file_is_refused(reslab_checkpoint, tmp_path,
                                                               capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    rc = main(["export", "--weights", str(reslab_checkpoint), "--format", "safetensors",
               "--out", f"{taken}/"])
    assert rc == 2 and "names a folder (trailing slash)" in _one_error_line(
        capsys.readouterr().err, "export")
    assert taken.read_text() == "keep me"


def test_export_out_folder_that_cannot_be_made_is_one_line_for_a_detector(tmp_path, capsys):
    """`--out PATH/` under a file, for a detector checkpoint too (was an OSError traceback)."""
    from reslab.detection import create_detector
    from reslab.train.checkpoint import Checkpoint

    det = create_detector("resnet18", "c4", num_classes=3, min_size=64, max_size=64)
    weights = tmp_path / "det.pt"
    Checkpoint(model_spec=det.reslab_spec.to_dict(), model=det.state_dict(),
               preprocess={"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
               classes=["a", "b"]).save(weights)
    (tmp_path / "afile").write_text("keep me")
    rc = main(["export", "--weights", str(weights), "--format", "torchscript", "--out",
               f"{tmp_path / 'afile' / 'sub'}/"])
    line = _one_error_line(capsys.readouterr().err, "export")
    assert rc == 2 and "cannot create the folder --out" in line
    assert (tmp_path / "afile").read_text() == "keep me"


# ---------------------------------------------------------- sizes bounded when parsed


@pytest.mark.parametrize("argv, message", [
    (["eval", "--weights", "w.pt", "--workers", "-1"],
     "argument --workers: must be an integer from 0 to 256, got -1"),
    (["eval", "--weights", "w.pt", "--scales", "224", "100000"],
     "argument --scales: must be an integer from 1 to 4096, got 100000"),
    (["eval", "--weights", "w.pt", "--crop", "0"],
     "argument --crop: must be an integer from 1 to 4096, got 0"),
    (["eval", "--weights", "w.pt", "--batch-size", "0"],
     "argument --batch-size: must be an integer >= 1, got 0"),
    (["predict", "--weights", "w.pt", "img.png", "--top", "-1"],
     "argument --top: must be an integer >= 1, got -1"),
    (["export", "--weights", "w.pt", "--format", "onnx", "--input", "100000"],
     "argument --input: must be an integer from 1 to 4096, got 100000"),
    (["export", "--weights", "w.pt", "--format", "onnx", "--input", "x"],
     "argument --input: invalid integer 'x'"),
], ids=["workers", "scales", "crop", "batch-size", "top", "input", "input-not-int"])
def test_sizes_are_bounded_when_parsed(capsys, argv, message):
    assert _usage_error(capsys, argv).endswith(f"error: {message}")


def test_export_model_bounds_the_input(tmp_path):
    from reslab.errors import ReslabError
    from reslab.interop import export_model

    with pytest.raises(ReslabError, match="input size must be from 1 to 4096 pixels, got "
                                          "100000"):
        export_model(create_model("resnet8"), tmp_path / "m.onnx", "onnx", 100000)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- precision across resumes


@pytest.mark.filterwarnings("ignore:--precision bf16 on")  # emulated bf16 on this CPU
def test_resume_in_another_precision_is_recorded(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--out", str(out), "--iterations", "2",
                 "--precision", "fp32"]) == 0
    first = json.loads((out / "run.json").read_text())
    assert first["precision_history"] == [{"iteration": 0, "precision": "fp32"}]
    with pytest.warns(UserWarning, match="trained in fp32 so far and continues in bf16"):
        assert main(["train", "--resume", "--out", str(out), "--iterations", "4",
                     "--precision", "bf16", "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["precision"] == "bf16"
    assert info["precision_history"] == [{"iteration": 0, "precision": "fp32"},
                                         {"iteration": 2, "precision": "bf16"}]
