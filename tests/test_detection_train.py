"""`reslab detect train|eval|predict` on tiny VOC- and COCO-layout folders, an exact resume
after SIGTERM, and the refusals (issue 16; Tables 7-8, Appendix A)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.detection import synthetic_detection, write_coco, write_voc
from reslab.detection.config import DetectConfig
from reslab.detection.models import create_detector
from reslab.detection.trainer import DetectionRunLog, DetectionSource, train_detector
from reslab.errors import ReslabError
from reslab.experiments import detection
from reslab.experiments.sweep import Settings, run_sweep
from reslab.models.registry import create_model
from reslab.train.checkpoint import Checkpoint
from reslab.train.recipes import TrainConfig
from reslab.train.runlog import RunLog, read_metrics

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SYNTH = dict(images=4, size=64, objects=2, seed=0)
#: A detector small enough for a CPU test: 64-pixel images, few anchors, RoIs, proposals.
TINY = ["--min-size", "64", "--max-size", "64", "--rpn-batch-size", "16", "--roi-batch-size",
        "4", "--rpn-train-proposals", "16", "--rpn-test-proposals", "4", "--device", "cpu",
        "--no-progress"]
TINY_CFG = dict(min_size=64, max_size=64, rpn_batch_size=16, roi_batch_size=4,
                rpn_train_proposals=16, rpn_test_proposals=4, device="cpu", progress=False,
                tensorboard=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny VOC root (trainval, test) and a tiny COCO root (train, val) of the same
    synthetic images, written by the data half's writers."""
    root = tmp_path_factory.mktemp("det")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for split, voc_split, coco_split in (("train", "trainval", "train"),
                                             ("test", "test", "val")):
            data = synthetic_detection(split, **SYNTH)
            write_voc(data, root / "voc", voc_split)
            write_coco(data, root / "coco", coco_split)
    return {"voc": root / "voc", "coco": root / "coco"}


def reslab(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_voc_c4_train_eval_predict(folders, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = reslab(capsys, "detect", "train", "--data", folders["voc"], "--backbone",
                             "resnet18", "--head", "c4", "--iterations", "2", "--batch-size",
                             "2", "--trainable-layers", "1", "--eval-every", "2", "--out",
                             out, *TINY)
    assert code == 0, err
    assert "done: 2 iterations" in text and "mAP@.5" in text
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["task"] == "detection"
    assert run["init"].startswith("from scratch") and "BN trainable" in run["init"]
    assert run["model_spec"]["name"] == "fasterrcnn_c4_resnet18"
    assert run["config"]["train_split"] == "trainval" and run["eval_split"] == "test"
    assert run["config"]["test_nms"] == run["model_spec"]["options"]["box_nms_thresh"] == 0.3
    records = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [2]
    assert set(records[0]["per_class"]) == set(synthetic_detection("test", **SYNTH).classes)
    assert 0 <= records[0]["map50"] <= 1 and records[0]["eval_images"] == 4
    for name in ("last.pt", "best.pt", "curves.png"):
        assert (out / name).is_file()
    ckpt = Checkpoint.load(out / "last.pt")
    assert ckpt.model_spec["task"] == "detection" and ckpt.iteration == 2

    code, text, err = reslab(capsys, "detect", "eval", "--weights", out / "last.pt", "--data",
                             folders["voc"], "--split", "test", "--json", "--no-progress")
    assert code == 0, err
    metrics = json.loads(text)
    assert {"map50", "map", "per_class", "images"} <= set(metrics) and metrics["images"] == 4
    assert metrics["test_nms"] == 0.3  # the run's
    assert metrics["map50"] == pytest.approx(records[0]["map50"])  # same weights, same split

    image = sorted((folders["voc"] / "JPEGImages").glob("test_*"))[0]
    drawn = tmp_path / "drawn"
    code, text, err = reslab(capsys, "detect", "predict", "--weights", out / "best.pt", image,
                             "--draw", drawn, "--score-threshold", "0", "--device", "cpu")
    assert code == 0, err
    assert f"{image}:" in text and "drawn:" in text
    png = drawn / f"{image.stem}.png"
    from torchvision.io import decode_image

    assert decode_image(str(png)).shape[1:] == (64, 64)
    assert not [p for p in drawn.iterdir() if p.name.endswith(".tmp")]


def test_coco_fpn_train_and_eval_equals_pycocotools(folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, text, err = reslab(capsys, "detect", "train", "--data", folders["coco"], "--backbone",
                             "resnet18", "--head", "fpn", "--train-split", "train",
                             "--val-split", "val", "--iterations", "1", "--batch-size", "2",
                             "--trainable-layers", "0", "--out", out, *TINY)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["model_spec"]["head"] == "fpn"

    # The numbers of `detect eval` are pycocotools' on the files it writes. Detections near
    # the ground truth (an untrained net's would all score 0) make them non-trivial.
    from reslab.detection import inference

    def near_truth(model, dataset, engine, batch_size=2, world=None, progress=False):
        g = torch.Generator().manual_seed(0)
        dets = []
        for i in range(len(dataset)):
            t = dataset[i][1]
            boxes = t["boxes"] + torch.randn(t["boxes"].shape, generator=g) * 3
            dets.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=g),
                         "labels": (t["labels"] - 1 + i % 2) % len(dataset.classes) + 1})
        return dets

    monkeypatch.setattr(inference, "detect_dataset", near_truth)
    preds = tmp_path / "preds.json"
    code, text, err = reslab(capsys, "detect", "eval", "--weights", out / "last.pt", "--data",
                             folders["coco"], "--split", "val", "--json", "--predictions", preds)
    assert code == 0, err
    metrics = json.loads(text)
    assert 0 < metrics["map"] < metrics["map50"] < 1
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(tmp_path / "preds-gt.json"))
    ev = COCOeval(gt, gt.loadRes(str(preds)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics["map"] == pytest.approx(ev.stats[0]) and metrics["map50"] == pytest.approx(
        ev.stats[1])
    results = json.loads(preds.read_text())
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}


@pytest.fixture
def sigterm_at_load(monkeypatch):
    """`sigterm_at_load(i)`: SIGTERM arrives while the trainer loads mini-batch i."""
    original = DetectionSource.load

    def arm(iteration: int | None) -> None:
        if iteration is None:
            monkeypatch.setattr(DetectionSource, "load", original)
            return

        def load(self, i):
            if i == iteration:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, i)

        monkeypatch.setattr(DetectionSource, "load", load)

    return arm


def resume_cfg(out: Path, **changes) -> DetectConfig:
    return DetectConfig(backbone="resnet18", head="c4", data="synthetic-det:train=4,test=2,"
                        "size=64,objects=2", iterations=3, batch_size=2, eval_every=3,
                        trainable_layers=0, out=str(out), **{**TINY_CFG, **changes})


def test_resume_after_sigterm_equals_uninterrupted_run(tmp_path, sigterm_at_load):
    full = train_detector(resume_cfg(tmp_path / "full"))
    assert full.status == "finished"

    sigterm_at_load(0)  # the first step completes, then the run saves and stops
    cut = train_detector(resume_cfg(tmp_path / "cut"))
    assert cut.status == "interrupted" and cut.iteration == 1
    assert Checkpoint.load(tmp_path / "cut" / "last.pt").iteration == 1
    sigterm_at_load(None)

    resumed = train_detector(DetectConfig.for_resume(tmp_path / "cut"))
    assert resumed.status == "finished" and resumed.iteration == 3
    a = Checkpoint.load(full.out / "last.pt").model
    b = Checkpoint.load(resumed.out / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    def timeless(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_sec")}
                for r in read_metrics(path)]

    assert timeless(resumed.out / "metrics.jsonl") == timeless(full.out / "metrics.jsonl")
    assert json.loads((resumed.out / "run.json").read_text())["resumed_from"] == 1
    with pytest.raises(ReslabError, match="other settings"):
        train_detector(resume_cfg(tmp_path / "cut", resume=True, lr=0.01))
    with pytest.raises(ReslabError, match="holds a detector's run: continue it with `reslab "
                       "detect train --resume"):
        TrainConfig.for_resume(tmp_path / "cut")


def test_refusals_are_one_line(folders, tmp_path, capsys):
    net = create_model("resnet8")
    Checkpoint(model_spec=net.reslab_spec.to_dict(), model=net.state_dict(),
               preprocess={"mean": torch.zeros(3, 1, 1), "std": None},
               classes=[str(k) for k in range(10)]).save(tmp_path / "classifier.pt")
    code, text, err = reslab(capsys, "detect", "eval", "--weights", tmp_path / "classifier.pt",
                             "--data", folders["voc"], "--split", "test")
    assert code == 2 and text == ""
    assert err.count("\n") == 1 and "is a classifier checkpoint (resnet8), not a detector" in err
    code, _, err = reslab(capsys, "detect", "train", "--data", folders["voc"], "--backbone",
                          "resnet20", "--out", tmp_path / "x")
    assert code == 2 and "--backbone must be one of" in err and err.count("\n") == 1
    code, _, err = reslab(capsys, "detect", "train", "--data", folders["voc"], "--train-split",
                          "nosuch", "--out", tmp_path / "y", *TINY)
    assert code == 2 and "nosuch" in err and err.count("\n") == 1
    assert not (tmp_path / "y" / "last.pt").exists()


def saved_detector(path: Path, backbone: str) -> Path:
    det = create_detector(backbone, "c4", num_classes=3, min_size=64, max_size=64,
                          rpn_post_nms_top_n_test=4)
    Checkpoint(model_spec=det.reslab_spec.to_dict(), model=det.state_dict(),
               preprocess={"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
               classes=["a", "b"]).save(path)
    return path


def test_export_of_a_resnet_detector_is_one_line(tmp_path, capsys):
    weights = saved_detector(tmp_path / "det.pt", "resnet18")
    code, _, err = reslab(capsys, "export", "--weights", weights, "--format", "torchscript")
    assert code == 2 and err.count("\n") == 1
    assert "fasterrcnn_c4_resnet18 cannot be exported to TorchScript" in err
    code, _, err = reslab(capsys, "export", "--weights", weights, "--format", "onnx")
    assert code == 2 and "a detector exports to TorchScript only" in err
    assert not list(tmp_path.glob("det.*.pt")) and not list(tmp_path.glob("*.onnx"))


def test_a_detector_given_to_classifier_commands_is_named(tmp_path, capsys):
    weights = saved_detector(tmp_path / "det.pt", "resnet18")
    for args in (["eval", "--weights", weights, "--data", "synthetic"],
                 ["predict", "--weights", weights, weights]):
        code, _, err = reslab(capsys, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert "is a detector checkpoint" in err and "reslab detect" in err


@pytest.mark.slow
def test_vgg16_detector_exports_to_torchscript(tmp_path, capsys):
    weights = saved_detector(tmp_path / "vgg.pt", "vgg16")
    code, text, err = reslab(capsys, "export", "--weights", weights, "--format", "torchscript")
    assert code == 0, err
    scripted = torch.jit.load(str(tmp_path / "vgg.torchscript.pt"))
    losses, detections = scripted([torch.rand(3, 70, 64)])
    assert detections[0]["boxes"].shape[1] == 4 and detections[0]["boxes"].dtype == torch.float32


REPRODUCE_TINY = ["--min-size", "64", "--max-size", "64", "--roi-batch-size", "4",
                  "--rpn-train-proposals", "16", "--rpn-test-proposals", "4",
                  "--trainable-layers", "0", "--batch-size", "2", "--device", "cpu",
                  "--no-progress"]


def test_reproduce_table7_and_table8(folders, tmp_path, capsys):
    out = tmp_path / "t7"
    one = str(1 / 80_000)  # one iteration of the VOC schedule
    args = ["reproduce", "table7", "--data", folders["voc"], "--out", out, "--models",
            "plain18,resnet18", "--budget", one, *REPRODUCE_TINY]
    code, text, err = reslab(capsys, *args)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "Table 7" in report and "73.2" in report and "76.4" in report
    assert "resnet18 vs plain18: VOC07 mAP@.5" in report and "from scratch" in report
    assert "per-class NMS at test: IoU 0.3 " in report  # new runs: the paper's
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["plain18", "resnet18"]
    assert all(r["iterations"] == 1 and 0 <= r["voc07_map50"] <= 1 for r in results["runs"])
    assert results["table7"][1]["voc07_map50"] == results["runs"][1]["voc07_map50"]
    code, text, err = reslab(capsys, *args)  # a rerun reuses the finished runs
    assert code == 0 and err.count("finished earlier, reusing") == 2

    out = tmp_path / "t8"
    code, text, err = reslab(capsys, "reproduce", "table8", "--data", folders["coco"], "--out",
                             out, "--models", "resnet18", "--budget", str(1 / 320_000),
                             "--train-split", "train", "--val-split", "val", *REPRODUCE_TINY)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "Table 8" in report and "48.4" in report and "27.2" in report
    row = json.loads((out / "results.json").read_text())["table8"][0]
    assert row["label"] == "resnet18" and 0 <= row["map"] <= row["map50"] <= 1

    code, _, err = reslab(capsys, "reproduce", "table7", "--data", folders["voc"], "--out",
                          tmp_path / "t7b", "--models", "resnet18", "--weights",
                          "resnet50=r50.pt", *REPRODUCE_TINY)
    assert code == 2 and "--weights names resnet50" in err
    code, _, err = reslab(capsys, "reproduce", "table6", "--out", tmp_path / "t6",
                          "--min-size", "64")
    assert code == 2 and "--min-size apply to the detection experiments" in err


@pytest.mark.slow
def test_two_ranks_then_resume_on_one(tmp_path):
    """torchrun DDP (gloo): each rank takes every other image of the global mini-batch."""
    out = tmp_path / "ddp"
    common = ["detect", "train", "--data", "synthetic-det:train=4,test=2,size=64,objects=2",
              "--backbone", "resnet18", "--head", "fpn", "--batch-size", "2",
              "--trainable-layers", "1", "--eval-every", "2", "--out", str(out), *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", "-m", "reslab"]
    r = subprocess.run(launch + common + ["--iterations", "2"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: 2 iterations") == 1
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    r = subprocess.run([sys.executable, "-m", "reslab", "detect", "train", "--resume", "--out",
                        str(out), "--iterations", "4"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["iteration"] for m in read_metrics(out / "metrics.jsonl")] == [2, 4]


def test_a_test_split_without_objects_reports_no_map(tmp_path, capsys):
    """Every test box difficult: nothing to score, so mAP is n/a (a line, not a crash)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        write_voc(synthetic_detection("train", **SYNTH), tmp_path / "voc", "trainval")
        test = synthetic_detection("test", **SYNTH)
        for r in test.records:
            r.difficult[:] = True
        write_voc(test, tmp_path / "voc", "test")
    code, text, err = reslab(capsys, "detect", "train", "--data", tmp_path / "voc",
                             "--backbone", "resnet18", "--iterations", "1", "--batch-size", "1",
                             "--out", tmp_path / "run", *TINY)
    assert code == 0, err
    assert "done: 1 iterations" in text and "mAP@.5 n/a" in text
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["map50"] is None


def test_eval_and_predict_use_the_runs_test_nms_unless_told(folders, tmp_path, capsys):
    classes = synthetic_detection("test", **SYNTH).classes
    det = create_detector("resnet18", "c4", num_classes=len(classes) + 1, min_size=64,
                          max_size=64, rpn_post_nms_top_n_test=4, box_nms_thresh=0.4)
    spec = det.reslab_spec.to_dict()
    old = {**spec, "options": {k: v for k, v in spec["options"].items()
                               if k != "box_nms_thresh"}}  # before the spec recorded it
    for name, model_spec in (("new.pt", spec), ("old.pt", old)):
        Checkpoint(model_spec=model_spec, model=det.state_dict(),
                   preprocess={"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
                   classes=list(classes)).save(tmp_path / name)
    for name, flags, nms in (("new.pt", [], 0.4), ("new.pt", ["--test-nms", "0.6"], 0.6),
                             ("old.pt", [], 0.5)):
        code, text, err = reslab(capsys, "detect", "eval", "--weights", tmp_path / name,
                                 "--data", folders["voc"], "--json", "--no-progress",
                                 "--device", "cpu", *flags)
        assert code == 0, err
        assert json.loads(text)["test_nms"] == nms
    image = sorted((folders["voc"] / "JPEGImages").glob("test_*"))[0]
    code, _, err = reslab(capsys, "detect", "predict", "--weights", tmp_path / "new.pt", image,
                          "--test-nms", "0")
    assert code == 2 and "--test-nms must be in (0, 1], got 0.0" in err and err.count("\n") == 1


def test_a_divergence_suggests_only_flags_of_the_command_that_ran(tmp_path, capsys):
    def accepted(*command: str) -> set[str]:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))

    for log, command in ((DetectionRunLog, ("detect", "train")), (RunLog, ("train",))):
        message = str(log(tmp_path, {}, [], "t", 1, 0, main=False).diverged("loss became nan", 3))
        suggested = set(re.findall(r"--[a-z][a-z0-9-]*", message))
        assert "--lr" in suggested and suggested <= accepted(*command), message


# ---- --data recorded absolute (the shared `absolute_data` of TrainConfig and DetectConfig)


def test_detect_data_is_recorded_absolute_and_synthetic_specs_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("voc07", "voc12", "test=2", "synthetic-det"):  # decoys for the specs
        (tmp_path / name).mkdir()
    assert DetectConfig(data="voc07").data == str(tmp_path / "voc07")
    assert DetectConfig(data="./voc07/").data == str(tmp_path / "voc07")
    assert DetectConfig(data="voc07,voc12").data == f"{tmp_path / 'voc07'},{tmp_path / 'voc12'}"
    assert DetectConfig(data="voc07, nosuch").data == f"{tmp_path / 'voc07'},nosuch"
    for spec in ("synthetic-det", "synthetic-det:train=4,test=2", "Synthetic-Det:size=64"):
        assert DetectConfig(data=spec).data == spec
    assert TrainConfig(data="voc07").data == str(tmp_path / "voc07")  # the same helper
    assert TrainConfig(data="synthetic:64:10").data == "synthetic:64:10"
    # a resume that spells the same roots otherwise continues the same data
    a, b = DetectConfig(data="voc07,voc12"), DetectConfig(data="voc07,voc12", lr=0.01)
    same = dataclasses.replace(a, data="./voc07,voc12/")
    assert same.changes_from(a) == {} and set(b.changes_from(a)) == {"lr"}


def tiny_voc_cfg(data: str, out: Path) -> DetectConfig:
    return DetectConfig(backbone="resnet18", head="c4", data=data, iterations=1, batch_size=2,
                        trainable_layers=0, out=str(out), **TINY_CFG)


@pytest.fixture
def no_plots(monkeypatch):
    monkeypatch.setattr(DetectionRunLog, "plot_curves", lambda self: None)  # ~1 s each


def test_detect_resume_from_another_folder_finds_relative_data(folders, tmp_path, monkeypatch,
                                                               no_plots):
    monkeypatch.chdir(folders["voc"].parent)
    out = tmp_path / "run"
    assert train_detector(tiny_voc_cfg("voc", out)).status == "finished"
    monkeypatch.chdir(tmp_path)  # no ./voc here
    cfg = DetectConfig.for_resume(out)
    assert cfg.data == str(folders["voc"])
    resumed = train_detector(cfg)  # opens the data and checks it is the run's
    assert (resumed.status, resumed.iteration) == ("finished", 1)


def test_a_run_recorded_with_relative_data_resumes_from_its_folder(folders, tmp_path,
                                                                    monkeypatch, no_plots):
    """Runs from before --data was recorded absolute: their data identity names the roots
    as spelled then, so a resume from their folder keeps that spelling."""
    monkeypatch.chdir(folders["voc"].parent)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("reslab.detection.config.absolute_data", lambda data, union: data)
        assert train_detector(tiny_voc_cfg("voc", out)).status == "finished"
    assert Checkpoint.load(out / "last.pt").config["data"] == "voc"
    cfg = DetectConfig.for_resume(out)
    assert cfg.data == str(folders["voc"])  # recorded absolute from now on
    assert train_detector(cfg).status == "finished"
    assert Checkpoint.load(out / "last.pt").data["name"] == "voc:voc trainval"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReslabError, match="'voc' is a relative path that does not exist from "
                       ".*: resume from the folder the run was started in"):
        DetectConfig.for_resume(out)


def test_an_old_relative_data_run_resumes_however_its_data_is_given(folders, tmp_path,
                                                                     monkeypatch, no_plots):
    """A run made before --data was recorded absolute names and fingerprints its data as
    `voc:voc trainval`: it resumes with --data given absolute, and through a config that
    `dataclasses.replace` rebuilt (making --data absolute again), keeping that identity."""
    monkeypatch.chdir(folders["voc"].parent)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("reslab.detection.config.absolute_data", lambda data, union: data)
        assert train_detector(tiny_voc_cfg("voc", out)).status == "finished"
    old = Checkpoint.load(out / "last.pt").data
    assert old["name"] == "voc:voc trainval"
    given = DetectConfig.for_resume(out, data=str(folders["voc"]), iterations=2)
    rebuilt = dataclasses.replace(DetectConfig.for_resume(out, iterations=2), progress=False)
    for cfg in (given, rebuilt):
        assert cfg.data == str(folders["voc"])
        result = train_detector(cfg)
        assert (result.status, result.iteration) == ("finished", cfg.iterations)
        assert Checkpoint.load(out / "last.pt").data == old
    monkeypatch.chdir(tmp_path)  # no ./voc here: its identity cannot be checked
    with pytest.raises(ReslabError, match="'voc' is a relative path that does not exist from "
                       ".*: resume from the folder the run was started in"):
        train_detector(DetectConfig.for_resume(out, data=str(folders["voc"]), iterations=4))


def test_an_old_table7_folder_resumes_with_its_own_nms_and_data(folders, tmp_path, monkeypatch,
                                                                capsys, sigterm_at_load,
                                                                no_plots):
    """A `reproduce table7` folder made before the paper's test NMS 0.3 was the default
    (its run.json records 0.5) and before --data was recorded absolute (`voc07,voc12` in
    its config and data identity), stopped after its first iteration: the same command
    resumes it with its own settings, then reuses it; the report says its NMS."""
    monkeypatch.chdir(tmp_path)
    for name in ("voc07", "voc12"):
        shutil.copytree(folders["voc"], tmp_path / name)
    args = ["reproduce", "table7", "--data", "voc07,voc12", "--out", "t7", "--models",
            "resnet18", "--budget", str(2 / 80_000), "--eval-points", "1", *REPRODUCE_TINY]
    with monkeypatch.context() as m:  # the reslab that made it
        m.setattr("reslab.detection.config.absolute_data", lambda data, union: data)
        m.setattr(detection, "DetectConfig", functools.partial(DetectConfig, test_nms=0.5))
        sigterm_at_load(0)  # the first iteration is saved, then the run stops
        assert reslab(capsys, *args)[0] == 143
        sigterm_at_load(None)
    run = tmp_path / "t7" / "runs" / "resnet18"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["config"]["test_nms"] == 0.5
    assert info["config"]["data"] == "voc07,voc12"
    assert info["data"]["name"] == "voc:voc07,voc12 trainval"

    code, _, err = reslab(capsys, *args)
    assert code == 0 and "resuming" in err, err
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["finished_iteration"]) == ("finished", 2)
    assert info["config"]["test_nms"] == 0.5 and info["config"]["data"] == (
        f"{tmp_path / 'voc07'},{tmp_path / 'voc12'}")
    assert Checkpoint.load(run / "last.pt").data["name"] == "voc:voc07,voc12 trainval"
    assert "per-class NMS at test: IoU 0.5 " in (tmp_path / "t7" / "report.md").read_text()
    assert json.loads((tmp_path / "t7" / "results.json").read_text())["runs"][0][
        "test_nms"] == 0.5
    code, _, err = reslab(capsys, *args)
    assert code == 0 and "finished earlier, reusing" in err, err
    new = Settings(data="voc07,voc12", out=tmp_path / "new", models=["resnet18"])
    assert detection.plan_runs(new, "voc")[0].cfg.test_nms == 0.3  # a new folder: the paper's


@pytest.mark.parametrize("recorded", [0.5, None, 0.3])
def test_a_detection_folder_keeps_its_recorded_nms_and_relative_union(tmp_path, monkeypatch,
                                                                     recorded):
    """The sweep's checks of an existing folder (no training: the run is finished): a
    run.json of the layout before today's (test_nms 0.5, or none: 0.5) or after (0.3),
    --data `voc07,voc12` recorded relative, is reused with the NMS it records."""
    monkeypatch.chdir(tmp_path)
    for name in ("voc07", "voc12"):
        (tmp_path / name).mkdir()
    s = Settings(data=f"{tmp_path / 'voc07'},{tmp_path / 'voc12'}", out=tmp_path / "t7",
                 budget=1 / 80_000, models=["resnet18"], device="cpu", precision="fp32")
    cfg = detection.plan_runs(s, "voc")[0].cfg
    config = {**cfg.to_dict(), "data": "voc07,voc12"}
    if recorded is None:
        del config["test_nms"]
    else:
        config["test_nms"] = recorded
    Path(cfg.out).mkdir(parents=True)
    (Path(cfg.out) / "run.json").write_text(json.dumps(
        {"config": config, "status": "finished", "finished_iteration": 1, "precision": "fp32"}))
    runs = detection.plan_runs(s, "voc")
    assert runs[0].cfg.test_nms == (recorded or 0.5)
    [outcome] = run_sweep(runs, None, log=lambda msg: None)
    assert outcome.skipped and outcome.cfg.test_nms == (recorded or 0.5)
