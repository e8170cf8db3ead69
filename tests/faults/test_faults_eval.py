"""Faults at evaluation (issue 9, items 6-7): images of another size, other class names,
incomplete or inconsistent checkpoints. Each is one clear line (or a warning), never a
traceback or a silently wrong number."""

from __future__ import annotations

import pytest
import torch

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.inference import load_model
from reslab.train.checkpoint import Checkpoint

SYNTH = "synthetic:256:128"


@pytest.fixture(scope="module")
def two_nets(tmp_path_factory):
    out = tmp_path_factory.mktemp("net") / "a"
    assert main(["train", "--model", "resnet8", "--data", SYNTH, "--out", str(out),
                 "--iterations", "4", "--batch-size", "32", "--eval-every", "4",
                 "--device", "cpu", "--no-progress"]) == 0
    return (out / "last.pt",)


def test_bad_milestones_are_refused(capsys):
    assert main(["train", "--data", SYNTH, "--milestones", "-3", "0", "--iterations", "2",
                 "--device", "cpu"]) == 2
    assert "--milestones must be increasing iterations >= 1" in capsys.readouterr().err


def test_eval_refuses_images_of_another_size(two_nets, capsys):
    small = "synthetic:n_train=64,n_test=32,size=16"
    assert main(["eval", "--weights", str(two_nets[0]), "--data", small, "--device",
                 "cpu"]) == 2
    assert "trained on 32x32 images; these are 16x16" in capsys.readouterr().err


def test_eval_warns_when_class_names_differ(two_nets, tmp_path, capsys):
    ckpt = Checkpoint.load(two_nets[0])
    ckpt.classes = [f"other{i}" for i in range(10)]
    ckpt.save(tmp_path / "renamed.pt")
    assert main(["eval", "--weights", str(tmp_path / "renamed.pt"), "--data", SYNTH,
                 "--device", "cpu"]) == 0
    assert "class names" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("preprocess", None, "'preprocess'"), ("classes", None, "'classes'"),
    ("classes", ["a", "b"], "classifier has 10 outputs"),
])
def test_incomplete_checkpoints_are_one_clear_error(two_nets, tmp_path, field, value, message):
    d = Checkpoint.load(two_nets[0]).to_dict()
    if value is None:
        del d[field]
    else:
        d[field] = value
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(ReslabError, match=message):
        load_model(tmp_path / "bad.pt")
