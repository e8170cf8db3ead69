"""`reslab reproduce precision` (issue 10) end to end on tiny synthetic runs: fp32 and bf16
runs per seed, mean +- std over seeds, the noise rule, and the figure."""

from __future__ import annotations

import json
import math

import pytest

from reslab.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
# 6 iterations of batch 8 per run, 2 evaluations (iterations 3 and 6).
TINY = ["--data", "synthetic:64:32", "--budget", "0.0001", "--batch-size", "8",
        "--eval-points", "2", "--device", "cpu", "--no-progress"]


def reproduce(*args: str) -> int:
    return main(["reproduce", "precision", *args, *TINY])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision")
    assert reproduce("--out", str(out), "--models", "resnet8", "--seeds", "2") == 0
    return out


def test_runs_pair_precisions_per_seed(study):
    results = json.loads((study / "results.json").read_text())
    assert results["experiment"] == "precision" and results["seeds"] == 2
    labels = [r["label"] for r in results["runs"]]
    assert labels == ["resnet8-fp32-s0", "resnet8-bf16-s0", "resnet8-fp32-s1",
                      "resnet8-bf16-s1"]
    for r in results["runs"]:
        info = json.loads((study / "runs" / r["label"] / "run.json").read_text())
        assert info["precision"] == r["precision"] == r["label"].split("-")[1]
        assert info["config"]["seed"] == r["seed"] == int(r["label"][-1])
        assert r["images_per_sec"] > 0


def test_report_compares_means_against_seed_noise(study):
    results = json.loads((study / "results.json").read_text())
    rows = results["precision"]["comparisons"]["resnet8"]
    assert [(r["iteration"], r["key"]) for r in rows] == [
        (3, "train_error"), (3, "test_error"), (6, "train_error"), (6, "test_error")]
    errors = {(r["label"], rec["iteration"]): rec for r in results["runs"]
              for rec in map(json.loads, (study / r["folder"] / "metrics.jsonl")
                             .read_text().splitlines())}
    for row in rows:
        key, it = row["key"], row["iteration"]
        for p in ("fp32", "bf16"):
            vals = [100 * errors[f"resnet8-{p}-s{k}", it][key] for k in (0, 1)]
            assert math.isclose(row[f"{p}_mean"], sum(vals) / 2)
            assert math.isclose(row[f"{p}_std"], abs(vals[0] - vals[1]) / math.sqrt(2),
                                abs_tol=1e-9)
        assert math.isclose(row["diff"], row["bf16_mean"] - row["fp32_mean"])
        se = math.sqrt((row["fp32_std"] ** 2 + row["bf16_std"] ** 2) / 2)
        assert math.isclose(row["se"], se)
        assert row["beyond_noise"] == (abs(row["diff"]) > 2 * se)
    report = (study / "report.md").read_text()
    assert (study / "precision.png").read_bytes().startswith(PNG)
    for text in ("](precision.png)", "## What this run shows", "beyond noise", "### Speed",
                 "resnet8 (2 seeds)", "images/s fp32"):
        assert text in report


def test_rerun_reuses_runs(study, monkeypatch):
    from reslab.train import trainer

    def fail(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "train", fail)
    assert reproduce("--out", str(study), "--models", "resnet8", "--seeds", "2") == 0
    results = json.loads((study / "results.json").read_text())
    assert all(r["reused"] for r in results["runs"])


def test_bad_arguments(tmp_path, capsys):
    assert reproduce("--out", str(tmp_path), "--models", "resnet8") == 2  # one seed
    assert reproduce("--out", str(tmp_path), "--seeds", "2", "--precision", "bf16") == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
