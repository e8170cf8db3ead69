"""`reslab reproduce` (Figures 1, 6, 7, Table 6, shortcut options) end to end on tiny
synthetic runs, and `reslab responses` (Figure 7's measurement)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os

import pytest
import torch

from reslab.cli import main
from reslab.data import Preprocess
from reslab.engine import precision_name
from reslab.errors import ReslabError
from reslab.experiments.sweep import check_same_config
from reslab.train.recipes import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"
# 6 iterations of batch 8 per run, 2 evaluations; tiny nets where the experiment allows.
TINY = ["--data", "synthetic:64:32", "--budget", "0.0001", "--batch-size", "8",
        "--eval-points", "2", "--device", "cpu", "--no-progress"]


def reproduce(*args: str) -> int:
    return main(["reproduce", *args, *TINY])


def no_training(monkeypatch) -> None:
    from reslab.train import trainer

    def fail(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "train", fail)


def check_outputs(out, figures, paper_numbers) -> dict:
    report = (out / "report.md").read_text()
    for fig in figures:
        assert (out / fig).read_bytes().startswith(PNG)
        assert f"]({fig})" in report
    for number in paper_numbers:
        assert number in report
    for heading in ("## Setup", "## What this run shows", "torch ", "wall time", "iterations"):
        assert heading in report
    results = json.loads((out / "results.json").read_text())
    for key in ("experiment", "budget", "iterations", "seeds", "data", "machine",
                "wall_seconds", "runs"):
        assert key in results
    assert results["iterations"] == 6
    for run in results["runs"]:
        for key in ("label", "model", "params", "final_train_error", "final_test_error",
                    "best_test_error", "iterations", "wall_seconds"):
            assert run[key] is not None, key
    return results


def test_figure1_and_rerun_skips(tmp_path, monkeypatch, capsys):
    out = tmp_path / "f1"
    assert reproduce("figure1", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "[run 1/2] plain20" in err and "[run 2/2] plain56" in err
    results = check_outputs(out, ["figure1.png"], [])
    assert [r["label"] for r in results["runs"]] == ["plain20", "plain56"]
    assert "degradation problem" in (out / "report.md").read_text()
    best = out / "runs" / "plain56" / "best.pt"
    mtime = best.stat().st_mtime_ns
    no_training(monkeypatch)
    assert reproduce("figure1", "--out", str(out)) == 0
    assert "finished earlier" in capsys.readouterr().err
    assert best.stat().st_mtime_ns == mtime
    # the same folder with other settings is refused
    monkeypatch.undo()
    assert main(["reproduce", "figure1", "--out", str(out),
                 *[a if a != "0.0001" else "0.0002" for a in TINY]]) == 2
    assert "use another --out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """figure6 on plain8/resnet8; later tests reuse its runs."""
    out = tmp_path_factory.mktemp("shared")
    assert reproduce("figure6", "--out", str(out), "--models", "plain8,resnet8") == 0
    return out


def test_figure6(shared):
    results = check_outputs(shared, ["figure6.png"], ["higher training and test error"])
    assert results["experiment"] == "figure6"
    assert {r["label"] for r in results["runs"]} == {"plain8", "resnet8"}
    report = (shared / "report.md").read_text()
    assert "At 8 layers the ResNet ended with" in report


def test_figure7_reuses_runs(shared, monkeypatch):
    no_training(monkeypatch)
    assert reproduce("figure7", "--out", str(shared), "--models", "plain8,resnet8") == 0
    results = check_outputs(shared, ["figure7.png"], [])
    for run in results["runs"]:
        assert run["reused"] and len(run["response_stds"]) == 7  # 6n+1 3x3 layers, n=1
    assert "responses are" in (shared / "report.md").read_text()
    assert (shared / "report-figure6.md").exists()  # figure6's report is kept


def test_shortcuts(shared):
    assert reproduce("shortcuts", "--out", str(shared), "--depth", "8") == 0
    results = check_outputs(shared, [], ["28.54", "25.03"])
    params = {r["label"]: r["params"] for r in results["runs"]}
    assert params["plain8"] == params["resnet8"] < params["resnet8-B"] < params["resnet8-C"]
    assert [r["shortcut"] for r in results["runs"]] == [None, "A", "B", "C"]


def test_table6_seeds_and_resume_after_interrupt(tmp_path, monkeypatch, capsys):
    from reslab.train import trainer

    calls = {"n": 0}

    @contextlib.contextmanager
    def stop_after_3():
        class Flag(dict):
            def __getitem__(self, key):  # the loop asks once per iteration
                calls["n"] += 1
                return 2 if calls["n"] > 3 else None
        yield Flag(signal=None)

    out = tmp_path / "t6"
    with monkeypatch.context() as m:
        m.setattr(trainer, "stop_requests", stop_after_3)
        assert reproduce("table6", "--out", str(out), "--models", "resnet8",
                         "--seeds", "2") == 130
    assert "re-run the same command" in capsys.readouterr().err.lower()
    run0 = out / "runs" / "resnet8-s0"
    stopped = json.loads((run0 / "run.json").read_text())
    assert stopped["status"] == "interrupted" and 0 < stopped["finished_iteration"] < 6
    assert not (out / "report.md").exists()
    assert reproduce("table6", "--out", str(out), "--models", "resnet8", "--seeds", "2") == 0
    info = json.loads((run0 / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed_from"] == stopped["finished_iteration"]
    results = check_outputs(out, [], ["8.75", "7.51", "7.17", "6.97", "6.43", "6.61", "7.93"])
    assert [r["label"] for r in results["runs"]] == ["resnet8-s0", "resnet8-s1"]
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    (row,) = results["table6"]
    assert row["runs"] == 2 and row["best"] == min(row["test_errors"])
    assert math.isclose(row["mean"], sum(row["test_errors"]) / 2)


def test_bad_arguments(tmp_path, capsys):
    assert reproduce("figure1", "--out", str(tmp_path), "--models", "plain8") == 2
    assert reproduce("figure6", "--out", str(tmp_path), "--models", "resnet9") == 2
    assert reproduce("shortcuts", "--out", str(tmp_path), "--depth", "9") == 2
    assert reproduce("table6", "--out", str(tmp_path), "--models", "resnet50") == 2
    assert reproduce("figure6", "--out", str(tmp_path), "--seeds", "3") == 2
    assert main(["reproduce", "table6", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "error" in capsys.readouterr().err


# ----------------------------------------------------------------- responses (Figure 7)


def test_response_layers_are_the_3x3_ones():
    from reslab.analysis.responses import response_layers
    from reslab.models.registry import create_model

    names = list(response_layers(create_model("resnet20")))
    assert len(names) == 19 and names[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
    assert len(response_layers(create_model("plain56"))) == 55
    assert len(response_layers(create_model("resnet50"))) == 16  # one 3x3 per bottleneck


def test_residual_response_is_measured_before_the_addition():
    from reslab.analysis.responses import layer_response_stds
    from reslab.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet8")
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocess(torch.full((3, 1, 1), 0.5))
    model.train()
    stds = layer_response_stds(model, images, pre, batch_size=4)
    assert model.training  # the mode is restored; measuring used eval mode
    model.eval()
    with torch.no_grad():
        x = pre(images)
        stem = model.bn1(model.conv1(x))
        block = model.layer1[0]
        h = torch.relu(stem)
        residual = block.residual(h)  # F(x): bn2's output
        after_add = block(h)
    assert stds["bn1"] == pytest.approx(stem.double().std(unbiased=False).item(), rel=1e-5)
    assert stds["layer1.0.bn2"] == pytest.approx(
        residual.double().std(unbiased=False).item(), rel=1e-5)
    assert stds["layer1.0.bn2"] != pytest.approx(after_add.double().std().item(), rel=1e-2)


def test_responses_cli(shared, capsys, tmp_path):
    weights = shared / "runs" / "resnet8" / "last.pt"
    png = tmp_path / "r.png"
    assert main(["responses", "--weights", str(weights), "--data", "synthetic:64:32",
                 "--device", "cpu", "--json", "--out", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet8" and len(result["layers"]) == 7
    assert all(layer["std"] > 0 for layer in result["layers"])
    assert png.read_bytes().startswith(PNG)


def test_jobs_run_in_parallel_and_finished_runs_are_skipped(tmp_path, monkeypatch, capsys):
    out = tmp_path / "f1"
    assert reproduce("figure1", "--out", str(out), "--jobs", "2") == 0
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in (out / "runs").iterdir()}
    assert set(runs) == {"plain20", "plain56"}
    assert all(r["status"] == "finished" for r in runs.values())
    threads = max(1, (os.cpu_count() or 1) // 2)  # the cores divided between the 2 jobs
    assert all(r["machine"]["torch_threads"] == threads for r in runs.values())
    capsys.readouterr()
    no_training(monkeypatch)  # a rerun trains nothing, in this process or in workers
    monkeypatch.setattr("reslab.experiments.sweep._train_in_parallel",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert reproduce("figure1", "--out", str(out), "--jobs", "2") == 0
    assert capsys.readouterr().err.count("finished earlier") == 2


def test_a_failed_job_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "t6"
    (out / "runs" / "resnet14").mkdir(parents=True)
    (out / "runs" / "resnet14" / "last.pt").write_bytes(b"")  # resuming it fails
    assert reproduce("table6", "--out", str(out), "--jobs", "2",
                     "--models", "resnet8,resnet14") == 2
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "resnet14" in err
    assert json.loads((out / "runs" / "resnet8" / "run.json").read_text())["status"] == "finished"


def test_a_rerun_may_change_what_does_not_change_the_runs(tmp_path):
    """A sweep folder is reused when only loader/engine settings differ (e.g. more DataLoader
    workers for table3), refused when anything the runs compute differs."""
    cfg = TrainConfig(model="resnet8", data="synthetic:64:32", out=str(tmp_path), iterations=6,
                      device="cpu", recipe="imagenet", workers=2)
    info = {"config": cfg.to_dict(), "precision": precision_name("auto", torch.device("cpu"))}
    for change in ({"workers": 8}, {"log_every": 7}, {"eval_batch_size": 64},
                   {"progress": False}):
        check_same_config("resnet8", info, dataclasses.replace(cfg, **change))
    other = "fp32" if info["precision"] == "bf16" else "bf16"
    for change in ({"lr": 0.2}, {"iterations": 12}, {"seed": 1}, {"precision": other}):
        with pytest.raises(ReslabError, match="other settings"):
            check_same_config("resnet8", info, dataclasses.replace(cfg, **change))
