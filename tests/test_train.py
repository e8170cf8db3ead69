"""The trainer and the paper's CIFAR recipe (Sec. 4.2): schedule, outputs, resume,
NaN stop, errors, and a net that learns on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.data import load_image_data
from reslab.engine import cpu_has_native_bf16
from reslab.errors import ReslabError
from reslab.train.checkpoint import load_checkpoint
from reslab.train.recipes import TrainConfig, cifar_recipe
from reslab.train.schedule import PlateauSchedule, StepSchedule, needs_warmup, scale_milestones
from reslab.train.trainer import read_metrics, train

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"
RECORD_FIELDS = {"iteration", "train_loss", "train_error", "test_loss", "test_error", "lr",
                 "images_per_sec", "elapsed"}


@pytest.fixture(scope="module")
def tiny_data():
    return load_image_data("synthetic:256:128", progress=False)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    values = dict(model="resnet8", data="synthetic:256:128", out=str(out), iterations=12,
                  batch_size=32, eval_every=4, progress=False, tensorboard=False)
    values.update(kw)
    return TrainConfig(**values)


# ---- the schedule (Sec. 4.2) ---------------------------------------------------------------

def test_paper_recipe_values():
    cfg = cifar_recipe()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert cfg.iterations == 64_000 and cfg.milestones_for(64_000) == (32_000, 48_000)


def test_milestones_scale_with_iterations():
    assert scale_milestones(64_000) == (32_000, 48_000)
    assert scale_milestones(6_400) == (3_200, 4_800)
    assert scale_milestones(1_000) == (500, 750)
    assert TrainConfig(milestones=(5, 7)).milestones_for(100) == (5, 7)


def test_step_lr_divides_by_ten_at_milestones():
    s = StepSchedule(0.1, (32_000, 48_000))
    assert s.lr(0) == 0.1 and s.lr(31_999) == 0.1
    assert s.lr(32_000) == pytest.approx(0.01) and s.lr(47_999) == pytest.approx(0.01)
    assert s.lr(48_000) == pytest.approx(0.001) and s.lr(63_999) == pytest.approx(0.001)


def test_plateau_divides_by_ten_when_the_error_stalls():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = PlateauSchedule(opt, patience=1)
    for err in (0.5, 0.4, 0.4):
        sched.after_eval(err)
    assert sched.lr(0) == pytest.approx(0.1)
    sched.after_eval(0.4)  # the second evaluation without improvement
    assert sched.lr(0) == pytest.approx(0.01)
    again = PlateauSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 1)
    again.load_state_dict(sched.state_dict())
    assert again.plateau.best == pytest.approx(0.4)


def test_warmup_rule():
    assert needs_warmup(110) and needs_warmup(1202)
    assert not needs_warmup(56) and not needs_warmup(20)
    s = StepSchedule(0.1, (32_000, 48_000), warmup_lr=0.01, warmup_until_error=0.8)
    assert s.lr(0) == 0.01 and s.lr(300) == 0.01
    assert not s.observe_train_error(0.85) and s.lr(301) == 0.01
    assert s.observe_train_error(0.79)
    assert s.lr(302) == 0.1 and not s.warming_up
    assert not StepSchedule(0.1, (10,)).warming_up


def test_warmup_is_used_for_110_layers(tmp_path, tiny_data):
    # resnet110 warms up at 0.01 until training error < 80%; synthetic data is easy, so the
    # warm-up must end within the run and the lr return to 0.1 (milestones far away).
    cfg = tiny_cfg(tmp_path / "r110", model="resnet110", iterations=40, eval_every=10,
                   milestones=(1000,))
    train(cfg, tiny_data)
    info = json.loads((tmp_path / "r110" / "run.json").read_text())
    assert info["warmup"] is True
    lrs = [r["lr"] for r in read_metrics(tmp_path / "r110" / "metrics.jsonl")]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.1)


# ---- a run and its outputs -------------------------------------------------------------------

def test_run_writes_every_output(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = train(tiny_cfg(out, tensorboard=True, device="cpu"), tiny_data)
    assert result.status == "finished" and result.iteration == 12
    for name in ("run.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [4, 8, 12]
    for r in records:
        assert RECORD_FIELDS <= set(r)
        assert 0 <= r["train_error"] <= 1 and 0 <= r["test_error"] <= 1
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["model"] == "resnet8"
    assert {"torch", "torchvision", "reslab"} <= set(info["versions"])
    assert "cpu_count" in info["machine"]
    # --precision auto on this CPU: bf16 where it is native (the precision study), else fp32
    assert info["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert info["precision_choice"].startswith(info["precision"] + ": auto on a CPU")
    ckpt = load_checkpoint(out / "last.pt")  # weights_only
    assert ckpt["iteration"] == 12 and ckpt["model_spec"]["name"] == "resnet8"
    assert ckpt["classes"] == tiny_data.classes
    assert ckpt["preprocess"]["mean"].shape == (3, 32, 32)  # per-pixel mean (Sec. 4.2)
    assert torch.allclose(ckpt["preprocess"]["mean"],
                          tiny_data.train.images.double().mean(0).float() / 255, atol=1e-5)
    assert "optimizer" in ckpt and "schedule" in ckpt


def test_learns_on_synthetic(tmp_path, tiny_data):
    result = train(tiny_cfg(tmp_path / "learn", iterations=40, eval_every=20), tiny_data)
    assert result.last["test_error"] < 0.5  # chance is 0.9
    records = read_metrics(tmp_path / "learn" / "metrics.jsonl")
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_same_seed_same_result(tmp_path, tiny_data):
    a = train(tiny_cfg(tmp_path / "a", iterations=6, eval_every=6), tiny_data)
    b = train(tiny_cfg(tmp_path / "b", iterations=6, eval_every=6), tiny_data)
    wa = load_checkpoint(a.out / "last.pt")["model"]
    wb = load_checkpoint(b.out / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_equals_uninterrupted_run(tmp_path, tiny_data, sigterm_at_batch):
    full = train(tiny_cfg(tmp_path / "full"), tiny_data)

    # Same run, sent SIGTERM while fetching batch 6: it saves a checkpoint and stops.
    sigterm_at_batch(6)
    cut = train(tiny_cfg(tmp_path / "cut"), tiny_data)
    assert cut.status == "interrupted" and cut.iteration == 7
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 7
    sigterm_at_batch(None)

    resumed = train(tiny_cfg(tmp_path / "cut", resume=True), tiny_data)
    assert resumed.status == "finished" and resumed.iteration == 12
    wf = load_checkpoint(full.out / "last.pt")["model"]
    wr = load_checkpoint(resumed.out / "last.pt")["model"]
    assert all(torch.equal(wf[k], wr[k]) for k in wf), "resumed weights differ"
    assert [r["iteration"] for r in read_metrics(resumed.out / "metrics.jsonl")] == [4, 8, 12]
    assert json.loads((resumed.out / "run.json").read_text())["resumed_from"] == 7


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    from reslab.train import sources

    original = sources.TensorSource.batch

    def poisoned(self, iteration):
        x, y = original(self, iteration)
        if iteration >= 5:
            x = x * float("nan")
        return x, y

    monkeypatch.setattr(sources.TensorSource, "batch", poisoned)
    with pytest.raises(ReslabError, match="nan"):
        train(tiny_cfg(tmp_path / "nan", log_every=1), tiny_data)
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ckpt["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_existing_run_needs_resume(tmp_path, tiny_data):
    train(tiny_cfg(tmp_path / "x", iterations=4), tiny_data)
    with pytest.raises(ReslabError, match="--resume"):
        train(tiny_cfg(tmp_path / "x", iterations=4), tiny_data)


def test_resume_with_another_model_is_refused(tmp_path, tiny_data):
    train(tiny_cfg(tmp_path / "x", iterations=4), tiny_data)
    with pytest.raises(ReslabError, match=r"resnet8 \(shortcut A\) run, not resnet14"):
        train(tiny_cfg(tmp_path / "x", iterations=8, model="resnet14", resume=True), tiny_data)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ReslabError, match="--batch-size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ReslabError, match="--lr"):
        cifar_recipe(lr=-1)


# ---- CLI: train, eval, predict -----------------------------------------------------------------

def test_cli_train_eval_predict(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "resnet8", "--data", "synthetic:256:128", "--out",
                 str(out), "--iterations", "20", "--batch-size", "32", "--eval-every", "10",
                 "--no-progress"]) == 0
    assert "done: 20 iterations" in capsys.readouterr().out
    assert main(["eval", "--weights", str(out / "best.pt"), "--data", "synthetic:256:128",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"top1_error", "top5_error", "images", "precision"}
    assert result["images"] == 128 and result["precision"] == json.loads(
        (out / "run.json").read_text())["precision"]  # auto picks as training did
    best = min(r["test_error"] for r in read_metrics(out / "metrics.jsonl"))
    assert result["top1_error"] == pytest.approx(best, abs=1e-6)

    from torchvision.io import write_png

    img = load_image_data("synthetic:256:128", progress=False).test.images[0]
    write_png(img, str(tmp_path / "x.png"))
    assert main(["predict", "--weights", str(out / "best.pt"), str(tmp_path / "x.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("x.png") and len(lines) == 6 and lines[1].strip().endswith("%")


def test_cli_missing_data_is_one_line_error(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nowhere" in err


# ---- real data ---------------------------------------------------------------------------------

def test_learns_on_real_cifar10_jpegs(tmp_path):
    """ResNet-8 for 150 iterations on shared/data's CIFAR-10 copy: well below chance (90%)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not present")
    data = load_image_data(str(ARCHIVE), progress=False)
    cfg = tiny_cfg(tmp_path / "real", data=str(ARCHIVE), iterations=150, batch_size=64,
                   eval_every=75, eval_batch_size=1000)
    result = train(cfg, data)
    records = read_metrics(tmp_path / "real" / "metrics.jsonl")
    assert result.last["test_error"] < 0.75
    assert records[-1]["train_error"] < records[0]["train_error"]


def test_resume_in_another_precision_warns(tmp_path, tiny_data):
    """Resuming may change the precision (e.g. `auto` on another machine), never silently."""
    out = tmp_path / "p"
    train(tiny_cfg(out, iterations=4, device="cpu", precision="fp32"), tiny_data)
    with pytest.warns(UserWarning, match="trained in fp32 so far and continues in bf16"):
        resumed = train(tiny_cfg(out, iterations=8, device="cpu", precision="bf16",
                                 resume=True), tiny_data)
    assert resumed.status == "finished"
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
