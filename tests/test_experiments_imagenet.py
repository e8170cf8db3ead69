"""`reslab reproduce table2|figure4|table3|table4|table5` end to end on a tiny image folder
at reduced sizes (Sec. 3.4's pipeline, nothing of the paper's scale): reports written,
tables filled beside the paper's numbers, finished runs reused, --classes and
--images-per-class recorded, the ensemble equal to its members' averaged probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from reslab.cli import main
from reslab.experiments.imagenet import protocol_scores
from reslab.experiments.sweep import Settings
from reslab.inference import errors_of, load_model
from tiny_imagenet import SMALL, make_tiny_imagenet

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imnet") / "tiny", classes=3, train=8,
                              val=3)


def reproduce(experiment, root, out, *extra):
    return main(["reproduce", experiment, "--data", str(root), "--out", str(out),
                 "--budget", "0.00001", "--batch-size", "4", "--eval-points", "2",
                 "--device", "cpu", "--workers", "0", "--no-progress", *SMALL, *extra])


def no_training(monkeypatch):
    from reslab.train import trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a finished run was trained again")))


def test_table2_then_figure4_on_the_same_runs(root, tmp_path, monkeypatch):
    out = tmp_path / "t2"
    assert reproduce("table2", root, out) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["table2"]) == {"plain18", "plain34", "resnet18", "resnet34"}
    assert all(r["images"] == 9 and r["top5_error"] <= r["top1_error"]
               for r in results["table2"].values())
    assert results["recipe"] == "imagenet" and results["iterations"] == 6
    report = (out / "report.md").read_text()
    for paper in ("27.94", "28.54", "27.88", "25.03"):
        assert paper in report
    shortcuts = {r["label"]: r["shortcut"] for r in results["runs"]}
    assert shortcuts == {"plain18": None, "plain34": None, "resnet18": "A", "resnet34": "A"}
    no_training(monkeypatch)
    assert reproduce("figure4", root, out) == 0
    assert (out / "figure4.png").read_bytes().startswith(PNG)
    assert "](figure4.png)" in (out / "report-figure4.md").read_text()
    assert reproduce("table2", root, out) == 0  # evaluations are cached too


def test_table3_4_5_reuse_runs_and_the_ensemble_averages_probabilities(root, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "t3"
    two = ["--models", "resnet34-A,resnet34-B"]
    assert reproduce("table3", root, out, *two) == 0
    t3 = json.loads((out / "results.json").read_text())["table3"]
    assert set(t3) == {"resnet34-A", "resnet34-B"}
    assert "24.52" in (out / "report.md").read_text()  # the paper's B beside ours
    no_training(monkeypatch)
    assert reproduce("table4", root, out, *two) == 0
    t4 = json.loads((out / "results.json").read_text())["table4"]
    assert set(t4) == {"resnet34-A", "resnet34-B"} and "21.84" in (out / "report.md").read_text()
    assert reproduce("table5", root, out, *two) == 0
    ens = json.loads((out / "results.json").read_text())["table5"]["ensemble"]
    # by hand: each member's multi-scale probabilities, averaged
    s = Settings(data=str(root), out=out, device="cpu", workers=0, recipe="imagenet")
    probs = [protocol_scores(s, load_model(out / "runs" / label / "last.pt"), "multiscale")
             for label in ("resnet34-A", "resnet34-B")]
    mean = (probs[0][0] + probs[1][0]) / 2
    expect = errors_of(mean, probs[0][1])
    assert ens["top1_error"] == pytest.approx(100 * expect.top1_error)
    assert ens["top5_error"] == pytest.approx(100 * expect.top5_error)
    assert torch.equal(probs[0][1], probs[1][1])


def test_subset_is_recorded_and_said(root, tmp_path):
    out = tmp_path / "sub"
    assert reproduce("table2", root, out, "--models", "resnet18", "--classes", "2",
                     "--images-per-class", "4") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["classes"] == 2 and results["data"]["train"] == 8
    assert results["data"]["images_per_class"] == 4
    assert results["table2"]["resnet18"]["images"] == 6  # 2 classes x 3 val images
    assert "Not comparable with the paper's numbers" in (out / "report.md").read_text()
    run = json.loads((out / "runs" / "resnet18" / "run.json").read_text())
    assert run["data"]["train"] == 8 and len(run["data"]["classes"]) == 2


def test_imagenet_flags_and_models_are_checked(root, tmp_path, capsys):
    assert main(["reproduce", "figure1", "--data", "synthetic", "--out", str(tmp_path / "x"),
                 "--crop", "32"]) == 2
    assert "apply to the ImageNet experiments" in capsys.readouterr().err
    assert reproduce("table3", root, tmp_path / "y", "--models", "resnet20") == 2
    assert "names none of table3's runs" in capsys.readouterr().err
