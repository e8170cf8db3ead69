"""Issue 26 (and items 6, 7, 12, 13 of issue 27): a resume of a folder whose run was
stopped before its first checkpoint, bounds of the detection flags, signals during a
detection evaluation, reproducible publishing and refused pickles. Each test reproduces
the fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.detection.config import DetectConfig
from reslab.detection.trainer import start_detection_run, train_detector
from reslab.errors import ReslabError
from reslab.experiments.sweep import RunSpec, run_sweep
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import start_run

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

DET_DATA = "synthetic-det:train=4,test=2,size=64,objects=2"
SYNTH = "synthetic:64:32"


def det_cfg(out: Path, **changes) -> DetectConfig:
    """The reproduction of issue 26, smaller: 2 iterations of 2 images of 64 pixels."""
    values = dict(backbone="resnet18", head="fpn", data=DET_DATA, min_size=64, max_size=64,
                  batch_size=2, rpn_test_proposals=20, device="cpu", precision="fp32",
                  iterations=2, eval_every=2, trainable_layers=0, out=str(out),
                  progress=False, tensorboard=False)
    return DetectConfig(**{**values, **changes})


def cls_cfg(out: Path, **changes) -> TrainConfig:
    values = dict(model="resnet8", data=SYNTH, out=str(out), iterations=4, batch_size=16,
                  eval_every=2, lr=0.05, progress=False, tensorboard=False, device="cpu",
                  precision="fp32")
    return TrainConfig(**{**values, **changes})


def killed_before_its_first_checkpoint(cfg) -> Path:
    """The folder a run killed (kill -9, a full disk, a power cut) right after it wrote
    run.json leaves: run.json and no last.pt."""
    run = (start_detection_run if isinstance(cfg, DetectConfig) else start_run)(cfg)
    run.folder.close()  # what the kernel does to the flock of a killed process
    out = Path(cfg.out)
    assert (out / "run.json").exists() and not (out / "last.pt").exists()
    return out


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ---- issue 26: --resume of a folder without a checkpoint ---------------------------------------

def test_detect_resume_without_a_checkpoint_continues_the_recorded_run(tmp_path):
    out = killed_before_its_first_checkpoint(det_cfg(tmp_path / "det"))
    recorded = json.loads((out / "run.json").read_text())["config"]
    cfg = DetectConfig.for_resume(out)  # `reslab detect train --resume --out DIR`
    assert (cfg.backbone, cfg.head, cfg.iterations, cfg.min_size) == ("resnet18", "fpn", 2, 64)
    assert main(["detect", "train", "--resume", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"] == {**recorded, "resume": True}
    assert run["resumed_from"] == 0 and run["finished_iteration"] == 2


def test_detect_resume_without_a_checkpoint_refuses_another_config(tmp_path, capsys):
    out = killed_before_its_first_checkpoint(det_cfg(tmp_path / "det", iterations=1))
    before = (out / "run.json").read_text()
    with pytest.raises(ReslabError, match="head: 'fpn' there, 'c4' now"):
        train_detector(det_cfg(out, head="c4", resume=True))  # the API's resume too
    assert main(["detect", "train", "--resume", "--out", str(out), "--backbone",
                 "resnet34"]) == 2
    assert "backbone: 'resnet18' there, 'resnet34' now" in one_line(capsys)
    assert (out / "run.json").read_text() == before


def test_resume_of_a_folder_whose_run_json_is_no_record_is_one_line(tmp_path, capsys):
    out = tmp_path / "broken"
    out.mkdir()
    (out / "run.json").write_text('{"config": ')
    with pytest.raises(ReslabError, match="not a run's record"):
        DetectConfig.for_resume(out)
    assert main(["detect", "train", "--resume", "--out", str(out)]) == 2
    assert "has no last.pt and" in one_line(capsys)
    assert main(["train", "--resume", "--out", str(out)]) == 2
    assert "start the run again without --resume" in one_line(capsys)


def test_train_resume_without_a_checkpoint_continues_the_recorded_run(tmp_path, capsys):
    out = killed_before_its_first_checkpoint(cls_cfg(tmp_path / "cls"))
    assert TrainConfig.for_resume(out).model == "resnet8"
    assert main(["train", "--resume", "--out", str(out), "--model", "resnet14"]) == 2
    assert "resnet8" in one_line(capsys)
    assert main(["detect", "train", "--resume", "--out", str(out)]) == 2  # a classifier's
    assert "records no detection config" in one_line(capsys)
    assert main(["train", "--resume", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["model"] == "resnet8" and run["config"]["lr"] == 0.05
    assert run["resumed_from"] == 0 and run["finished_iteration"] == 4


def test_resume_of_an_ended_run_whose_last_pt_is_gone_is_refused(tmp_path, capsys):
    from reslab.train.trainer import train

    out = tmp_path / "ended"
    train(cls_cfg(out, iterations=2))
    (out / "last.pt").unlink()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out)]) == 2
    assert "ended (finished at iteration 2) but its last.pt is missing" in one_line(capsys)
    assert (out / "metrics.jsonl").read_text() == metrics


def test_a_sweep_over_a_folder_without_a_checkpoint(tmp_path):
    out = killed_before_its_first_checkpoint(cls_cfg(tmp_path / "cls"))
    with pytest.raises(ReslabError, match="other settings.*lr: 0.05 there, 0.1 now"):
        run_sweep([RunSpec("r", cls_cfg(out, lr=0.1))], None)
    [outcome] = run_sweep([RunSpec("r", cls_cfg(out))], None)
    assert outcome.info["status"] == "finished" and outcome.info["resumed_from"] == 0


# ---- issue 26 and 27.6: absurd sizes refused when parsed, in one line --------------------------

def usage_error(capsys, argv: list[str]) -> str:
    """argparse's refusal: exit status 2 and one `error:` line after the usage."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


DETECT_TRAIN = ["detect", "train", "--data", "synthetic-det"]
DETECT_EVAL = ["detect", "eval", "--weights", "w.pt", "--data", "synthetic-det"]
SIZES = [
    (DETECT_TRAIN, "--workers", "100000", "from 0 to 256"),
    (DETECT_TRAIN, "--workers", "-1", "from 0 to 256"),
    (DETECT_TRAIN, "--min-size", "100000", "from 32 to 4096"),
    (DETECT_TRAIN, "--max-size", "0", "from 32 to 8192"),
    (DETECT_TRAIN, "--batch-size", "100000", "from 1 to 1024"),
    (DETECT_TRAIN, "--eval-batch-size", "0", "from 1 to 1024"),
    (DETECT_TRAIN, "--rpn-train-proposals", "10000000", "from 1 to 20000"),
    (DETECT_TRAIN, "--rpn-test-proposals", "0", "from 1 to 20000"),
    (DETECT_TRAIN, "--rpn-batch-size", "-5", "from 1 to 20000"),
    (DETECT_TRAIN, "--roi-batch-size", "10000000", "from 1 to 20000"),
    (DETECT_TRAIN, "--anchor-sizes", "100000", "from 1 to 8192"),
    (DETECT_TRAIN, "--trainable-layers", "9", "from 0 to 5"),
    (DETECT_TRAIN, "--iterations", "0", ">= 1"),
    (DETECT_TRAIN, "--eval-every", "-1", ">= 1"),
    (DETECT_EVAL, "--min-size", "100000", "from 32 to 4096"),
    (DETECT_EVAL, "--batch-size", "100000", "from 1 to 1024"),
    (["detect", "predict", "--weights", "w.pt", "a.png"], "--max-size", "100000",
     "from 32 to 8192"),
    (["train"], "--workers", "100000", "from 0 to 256"),
    (["reproduce", "table2"], "--workers", "100000", "from 0 to 256"),
    (["reproduce", "table7"], "--rpn-test-proposals", "10000000", "from 1 to 20000"),
]


@pytest.mark.parametrize("argv, flag, value, bounds", SIZES,
                         ids=[f"{' '.join(a[:2])} {f} {v}" for a, f, v, _ in SIZES])
def test_absurd_sizes_are_refused_when_parsed(capsys, argv, flag, value, bounds):
    line = usage_error(capsys, [*argv, flag, value])
    assert line.endswith(f"error: argument {flag}: must be an integer {bounds}, got {value}")


def test_detect_configs_bound_their_sizes():
    for field, value in (("workers", 100_000), ("batch_size", 100_000),
                         ("rpn_test_proposals", 10**7), ("eval_batch_size", 5000)):
        with pytest.raises(ReslabError, match=f"must be in .*got {value}"):
            DetectConfig(**{field: value})
    with pytest.raises(ReslabError, match="--workers must be in 0..256"):
        TrainConfig(recipe="imagenet", workers=100_000)


def test_a_synthetic_det_of_terabytes_is_refused(tmp_path, capsys):
    from reslab.detection import open_detection_data

    with pytest.raises(ReslabError, match=r"11,718.8 GiB in memory, more than 8 GiB"):
        open_detection_data("synthetic-det:images=1000000,size=2048", "train")
    assert main(["detect", "train", "--data", "synthetic-det:train=1,test=1000000,size=256",
                 "--device", "cpu", "--out", str(tmp_path / "big")]) == 2
    assert "test split of 1000000 images of 256x256" in one_line(capsys)


# ---- issue 27.7: SIGTERM during a detection evaluation ------------------------------------------

def test_sigterm_during_a_detection_evaluation_stops_it_and_the_resume_makes_it(
        tmp_path, monkeypatch, capsys):
    """A stop during the evaluation at iteration 1 ends it at its next batch (not after the
    whole split), saves last.pt at 1 and exits 143 as a sweep does; the resume evaluates
    at 1 first, and ends as the uninterrupted run."""
    import os
    import signal

    import torch

    from reslab.detection import inference
    from reslab.train.checkpoint import Checkpoint
    from reslab.train.runlog import read_metrics

    cfg = det_cfg(tmp_path / "full", eval_every=1, eval_batch_size=1)
    full = train_detector(cfg)
    real, calls = inference.detect, []

    def detect(*args, **kwargs):  # SIGTERM while the first evaluation's first batch runs
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "detect", detect)
    cut = tmp_path / "cut"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.to_dict().items()
             if k in ("backbone", "head", "data", "min_size", "max_size", "batch_size",
                      "rpn_test_proposals", "device", "precision", "iterations",
                      "eval_every", "eval_batch_size", "trainable_layers")]
    assert main(["detect", "train", *flags, "--no-progress", "--out", str(cut)]) == 143
    assert len(calls) == 1  # of the 2 test images' batches
    assert Checkpoint.load(cut / "last.pt").iteration == 1
    assert read_metrics(cut / "metrics.jsonl") == []
    assert "stopped at iteration 1/2" in capsys.readouterr().out
    monkeypatch.setattr(inference, "detect", real)

    resumed = train_detector(DetectConfig.for_resume(cut, progress=False, tensorboard=False))
    assert resumed.status == "finished"

    def timeless(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_sec")}
                for r in read_metrics(path)]

    assert [r["iteration"] for r in timeless(cut / "metrics.jsonl")] == [1, 2]
    assert timeless(cut / "metrics.jsonl") == timeless(full.out / "metrics.jsonl")
    a = Checkpoint.load(full.out / "last.pt").model
    b = Checkpoint.load(cut / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- issue 27.12: reproducible publishing ------------------------------------------------------

def tiny_checkpoint(folder: Path, iteration: int, planned: int) -> Path:
    """A resnet8 checkpoint (untrained) with a run.json beside it, as a run leaves them."""
    from reslab import create_model
    from reslab.atomic_write import atomic_write_json
    from reslab.train.checkpoint import Checkpoint

    folder.mkdir(parents=True)
    net = create_model("resnet8")
    cfg = cls_cfg(folder, iterations=planned).to_dict()
    Checkpoint(model_spec=net.reslab_spec.to_dict(), model=net.state_dict(),
               preprocess={"mean": torch_zeros(3, 32, 32), "std": None},
               classes=[f"class{k}" for k in range(10)], iteration=iteration,
               config=cfg).save(folder / "last.pt")
    atomic_write_json(folder / "run.json", {"config": cfg, "iterations": planned,
                                            "command": "reslab train ..."})
    return folder / "last.pt"


def torch_zeros(*shape: int):
    import torch

    return torch.zeros(*shape)


def test_publishing_a_checkpoint_twice_gives_one_sha256_and_notes_an_unfinished_run(tmp_path):
    from reslab.models.publish import publish

    last = tiny_checkpoint(tmp_path / "run", iteration=2, planned=4)
    a = publish(last, "t", SYNTH, registry=tmp_path / "a")
    b = publish(last, "t", SYNTH, registry=tmp_path / "b")
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    assert "had not finished: these are the weights at iteration 2 of the 4 planned" in a.notes


def test_a_crafted_iteration_is_refused(tmp_path, capsys):
    import torch

    from reslab.train.checkpoint import Checkpoint

    last = tiny_checkpoint(tmp_path / "run", iteration=2, planned=4)
    obj = torch.load(last, weights_only=True)
    torch.save({**obj, "iteration": 10**30}, last)
    with pytest.raises(ReslabError, match=r"iteration.*from 0 to 1,000,000,000"):
        Checkpoint.load(last)
    assert main(["weights", "publish", str(last), "--name", "t", "--data", SYNTH]) == 2
    assert "1000000000000000000000000000000" not in one_line(capsys)


# ---- issue 27.13: a refused code-carrying pickle ----------------------------------------------

class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_with_code_names_the_refused_global_not_torchs_advice(tmp_path, capsys):
    import torch

    from reslab.interop import read_file
    from reslab.train.checkpoint import Checkpoint

    path = tmp_path / "code.pt"
    torch.save({"model": _Code()}, path)
    for read in (read_file, Checkpoint.load):
        with pytest.raises(ReslabError) as e:
            read(path)
        text = str(e.value)
        assert "the Python global print, which reslab will not load" in text, text
        assert "weights_only=False" not in text and "likely succeed" not in text
        assert "\n" not in text
    assert main(["eval", "--weights", str(path)]) == 2
    err = one_line(capsys)
    assert "global print" in err and "this ran" not in err


# ---- issue 26's audit: torch.hub with bad names -------------------------------------------------

def test_hub_refuses_unknown_options_and_helpers_by_the_entry_points_name():
    import torch

    repo = str(Path(__file__).resolve().parents[2])
    with pytest.raises(TypeError, match=r"resnet20\(\) got an unexpected keyword argument "
                                        "'bogus'"):
        torch.hub.load(repo, "resnet20", source="local", bogus=1)
    with pytest.raises(RuntimeError, match="Cannot find callable _entry_point"):
        torch.hub.load(repo, "_entry_point", source="local", name="resnet20")
    with pytest.raises(ReslabError, match="is not a registry name"):
        torch.hub.load(repo, "resnet20", source="local", weights="../../etc/passwd")
    assert torch.hub.load(repo, "resnet20", source="local", num_classes=7).fc.out_features == 7
