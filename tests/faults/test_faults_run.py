"""Faults a training run meets (issue 9): two runs on one folder, divergence, a full disk,
unusable output folders, broken resume inputs, signals. Each test reproduces the fault."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.data import load_image_data
from reslab.errors import ReslabError
from reslab.train import runlog
from reslab.train.checkpoint import Checkpoint
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import train

SYNTH = "synthetic:256:128"


@pytest.fixture(scope="module")
def tiny_data():
    return load_image_data(SYNTH, progress=False)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    values = dict(model="resnet8", data=SYNTH, out=str(out), iterations=12, batch_size=32,
                  eval_every=4, progress=False, tensorboard=False, device="cpu")
    values.update(kw)
    return TrainConfig(**values)


def cli(*args: str) -> list[str]:
    return ["train", "--model", "resnet8", "--data", SYNTH, "--batch-size", "16",
            "--device", "cpu", "--no-progress", *args]


# ---- 1. two runs on one folder --------------------------------------------------------------

def test_second_run_on_the_same_folder_is_refused_and_a_killed_run_resumes(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, "-m", "reslab", *cli("--iterations", "100000", "--eval-every", "1",
                                              "--out", str(out))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists():  # the first run is training
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = subprocess.run(
            [sys.executable, "-m", "reslab", *cli("--iterations", "4", "--resume",
                                                  "--out", str(out))],
            env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "another reslab process is writing to" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kill left the lock file; the kernel dropped the lock with the process.
    assert (out / ".lock").exists()
    reached = Checkpoint.load(out / "last.pt").iteration
    assert main(cli("--iterations", str(reached + 2), "--eval-every", "1", "--resume",
                    "--out", str(out))) == 0
    assert Checkpoint.load(out / "last.pt").iteration == reached + 2


def test_a_folder_in_use_is_refused_in_process(tmp_path, tiny_data):
    from reslab.train.run_folder import RunFolder

    with RunFolder(tmp_path / "x").open(resume=False):
        with pytest.raises(ReslabError, match="another reslab process"):
            train(tiny_cfg(tmp_path / "x"), tiny_data)
    train(tiny_cfg(tmp_path / "x", iterations=4), tiny_data)  # free again


# ---- 2. divergence -----------------------------------------------------------------------------

def test_lr_inf_is_refused():
    assert main(["train", "--data", "synthetic:400:100", "--batch-size", "16",
                 "--iterations", "2", "--lr", "inf", "--device", "cpu"]) == 2


def test_diverged_weights_are_never_saved(tmp_path, tiny_data, monkeypatch):
    """An update that makes the weights NaN right before an evaluation: no checkpoint,
    best or last, holds them, metrics.jsonl stays strict JSON, and the message names a
    finite checkpoint."""
    original = torch.optim.SGD.step
    calls = {"n": 0}

    def poisoned_step(self, *a, **k):
        out = original(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 8:  # the update of iteration 8, an evaluation iteration
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    out = tmp_path / "nan"
    with pytest.raises(ReslabError, match=r"last\.pt \(iteration 4\) holds the last finite"):
        train(tiny_cfg(out, log_every=100), tiny_data)
    for name in ("last.pt", "best.pt"):
        ckpt = Checkpoint.load(out / name)
        assert ckpt.iteration == 4
        assert all(torch.isfinite(v).all() for v in ckpt.model.values() if v.is_floating_point())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [4]


def test_nan_at_an_interrupt_is_not_saved(tmp_path, tiny_data, sigterm_at_batch):
    sigterm_at_batch(5, poison=True)
    with pytest.raises(ReslabError, match="iteration 4"):
        train(tiny_cfg(tmp_path / "x"), tiny_data)
    assert Checkpoint.load(tmp_path / "x" / "last.pt").iteration == 4


# ---- 4. unusable outputs and a full disk ------------------------------------------------------

def test_out_that_is_a_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import reslab.train.sources as src

    def no_loading(*a, **k):
        raise AssertionError("data was loaded before the output folder was checked")

    monkeypatch.setattr(src, "load_image_data", no_loading)
    (tmp_path / "f").write_text("x")
    assert main(cli("--iterations", "2", "--out", str(tmp_path / "f"))) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err


def test_unwritable_out_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import reslab.train.run_folder as rf

    real_open = os.open

    def read_only(path, flags, *a):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *a)

    monkeypatch.setattr(rf.os, "open", read_only)
    assert main(cli("--iterations", "2", "--out", str(tmp_path / "ro"))) == 2
    assert "Read-only file system" in capsys.readouterr().err


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, tiny_data, monkeypatch):
    out = tmp_path / "full"
    train(tiny_cfg(out, iterations=4), tiny_data)
    before = (out / "last.pt").read_bytes()
    import reslab.atomic_write as aw

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aw.os, "fsync", no_space)
    with pytest.raises(ReslabError, match="(?i)no space left.*intact"):
        train(tiny_cfg(out, iterations=8, resume=True), tiny_data)
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


# ---- 6. broken resume inputs and start-up -------------------------------------------------------

def test_resume_from_an_empty_last_pt(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    assert main(cli("--iterations", "2", "--resume", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "empty (0 bytes)" in err and "Traceback" not in err


def test_resume_with_a_corrupt_metrics_line(tmp_path, tiny_data):
    out = tmp_path / "m"
    train(tiny_cfg(out, iterations=4), tiny_data)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "train_lo\n')
    with pytest.warns(UserWarning, match="not a metrics record"):
        result = train(tiny_cfg(out, iterations=8, resume=True), tiny_data)
    assert result.status == "finished"
    assert [r["iteration"] for r in runlog.read_metrics(out / "metrics.jsonl")] == [4, 8]


def test_ctrl_c_during_start_up_is_one_line(capsys, monkeypatch):
    import reslab.cli as cli_module

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "build_parser", interrupted)
    assert cli_module.main(["train"]) == 130
    assert capsys.readouterr().err.strip() == "reslab: interrupted"


# ---- 7. quieter wrongs ---------------------------------------------------------------------------

def test_resume_with_another_shortcut_names_it(tmp_path, tiny_data):
    train(tiny_cfg(tmp_path / "s", iterations=4), tiny_data)
    with pytest.raises(ReslabError, match=r"resnet8 \(shortcut A\) run, not resnet8 "
                                          r"\(shortcut B\)"):
        train(tiny_cfg(tmp_path / "s", iterations=8, shortcut="B", resume=True), tiny_data)


def test_resume_with_other_data_is_refused(tmp_path, tiny_data):
    train(tiny_cfg(tmp_path / "d", iterations=4), tiny_data)
    held_out = load_image_data(SYNTH, progress=False, val_split=32)  # other training images
    with pytest.raises(ReslabError, match="other data"):
        train(tiny_cfg(tmp_path / "d", iterations=8, resume=True), held_out)


def test_resume_with_other_settings_is_refused(tmp_path, tiny_data):
    train(tiny_cfg(tmp_path / "o", iterations=4), tiny_data)
    with pytest.raises(ReslabError, match="lr: 0.1 there, 0.05 now"):
        train(tiny_cfg(tmp_path / "o", iterations=8, lr=0.05, resume=True), tiny_data)


def test_resume_needs_no_flags(tmp_path):
    out = tmp_path / "plain"
    assert main(cli("--iterations", "2", "--eval-every", "2", "--lr", "0.05",
                    "--out", str(out))) == 0
    assert main(["train", "--resume", "--out", str(out), "--iterations", "4",
                 "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["lr"] == 0.05 and run["config"]["model"] == "resnet8"
    assert run["finished_iteration"] == 4 and run["resumed_from"] == 2


def test_sigterm_saves_the_pending_interval(tmp_path, tiny_data, sigterm_at_batch):
    sigterm_at_batch(6)
    cut = train(tiny_cfg(tmp_path / "p", log_every=100), tiny_data)
    assert cut.status == "interrupted" and cut.iteration == 7
    ckpt = Checkpoint.load(tmp_path / "p" / "last.pt")
    loss_sum, wrong, images = ckpt.interval
    assert images == 3 * 32 and loss_sum > 0  # iterations 5, 6 and 7 since the evaluation at 4
