"""The ImageNet recipe on CPU at small sizes: `reslab train --recipe imagenet` (checkpoint
mean, resume) and `reslab eval --recipe imagenet` (1 crop, 10 crops, multi-scale)."""

from __future__ import annotations

import json

import pytest
import torch

from reslab.cli import main
from reslab.train.recipes import TrainConfig
from tiny_imagenet import SMALL, make_tiny_imagenet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imagenet")
    root = make_tiny_imagenet(tmp / "tiny")
    out = tmp / "run"
    args = ["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
            "--precision", "fp32", "--out", str(out), *SMALL]
    assert main(args + ["--iterations", "2"]) == 0
    return root, out, args


def test_checkpoint_carries_the_recipe_and_the_per_pixel_mean(trained):
    _, out, _ = trained
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["classes"] == ["class0", "class1", "class2"]
    assert tuple(ckpt["preprocess"]["mean"].shape) == (3, 32, 32)
    cfg = ckpt["config"]
    assert cfg["recipe"] == "imagenet" and cfg["lr_policy"] == "plateau"
    assert cfg["scale"] == [40, 56] and cfg["test_resize"] == 36 and cfg["crop"] == 32
    assert "plateau" in ckpt["schedule"]


def test_resume_with_a_worker(trained):
    root, out, args = trained
    assert main(args + ["--iterations", "3", "--workers", "1", "--resume"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"] == 2 and run["finished_iteration"] == 3
    assert [m["iteration"] for m in
            map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [2, 3]


@pytest.mark.parametrize("protocol", [["--crops", "1"], ["--crops", "10"],
                                      ["--scales", "32", "40"]])
def test_eval_protocols(trained, capsys, protocol):
    root, out, _ = trained
    capsys.readouterr()
    assert main(["eval", "--recipe", "imagenet", "--weights", str(out / "best.pt"),
                 "--data", str(root), "--device", "cpu", "--json", *protocol]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 9
    assert 0 <= result["top5_error"] <= result["top1_error"] <= 1
    if protocol == ["--crops", "1"]:  # the trainer's validation view, same numbers
        best = json.loads((out / "run.json").read_text())["best_error"]
        assert result["top1_error"] == pytest.approx(best)


def test_eval_prints_errors(trained, capsys):
    root, out, _ = trained
    assert main(["eval", "--recipe", "imagenet", "--weights", str(out / "last.pt"),
                 "--data", str(root), "--device", "cpu", "--crops", "10"]) == 0
    text = capsys.readouterr().out
    assert "10-crop 32 of shorter side 36" in text and "top-5 error" in text


def test_paper_sizes_by_default_and_bad_sizes(tmp_path, capsys):
    cfg = TrainConfig.imagenet()
    assert (cfg.scale, cfg.crop, cfg.test_resize, cfg.lighting) == ((256, 480), 224, 256, 0.1)
    assert (cfg.batch_size, cfg.iterations, cfg.lr_policy) == (256, 600_000, "plateau")
    root = make_tiny_imagenet(tmp_path / "tiny", classes=2, train=2, val=1)
    base = ["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
            "--iterations", "1", "--batch-size", "2", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "bad")]
    assert main(base + ["--scale", "40", "56", "--crop", "48"]) == 2
    assert "--crop 48" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic:64:16", "--crop", "32",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--recipe imagenet" in capsys.readouterr().err


def test_an_old_relative_data_folder_run_resumes(tmp_path, monkeypatch):
    """A run made before --data was recorded absolute names its image folder as spelled
    (`tiny`); resumed from its folder, where --data is now made absolute, it is the same
    data (was: "trained on other data (name: 'tiny' there, '/.../tiny' now)")."""
    monkeypatch.chdir(tmp_path)
    make_tiny_imagenet(tmp_path / "tiny")
    args = ["--out", "run", "--device", "cpu", "--no-progress", "--workers", "0"]
    with monkeypatch.context() as m:
        m.setattr("reslab.train.recipes.absolute_data", lambda data, **kw: data)
        assert main(["train", "--model", "resnet18", "--recipe", "imagenet", "--data", "tiny",
                     "--iterations", "2", "--batch-size", "4", "--eval-every", "2", *args,
                     *SMALL]) == 0
    old = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert old["data"]["name"] == "tiny" and old["config"]["data"] == "tiny"
    assert main(["train", "--resume", "--iterations", "4", *args]) == 0
    new = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert new["iteration"] == 4 and new["data"]["name"] == str(tmp_path / "tiny")
    assert {k: v for k, v in new["data"].items() if k != "name"} == {
        k: v for k, v in old["data"].items() if k != "name"}
    make_tiny_imagenet(tmp_path / "other", classes=2)  # another folder is still refused
    assert main(["train", "--resume", "--iterations", "6", "--data", "other", *args]) == 2
