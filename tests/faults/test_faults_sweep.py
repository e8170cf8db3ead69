"""Faults of `reslab reproduce` sweeps (issue 17, part 1): stop signals with `--jobs`, a
parent that dies, duplicate `--models`, folders spelled or moved otherwise, unusable
run.json files, absurd `--budget` values and stale cached evaluations. Each test
reproduces the fault on tiny synthetic runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

import reslab.cli.train  # noqa: F401  (binds trainer.train before any test patches it)
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.experiments import imagenet, sweep
from reslab.experiments.sweep import RunSpec, Settings, check_same_config, run_sweep
from reslab.train import runlog, trainer
from reslab.train.checkpoint import Checkpoint
from reslab.train.recipes import TrainConfig
from reslab.train.run_folder import RunFolder
from tiny_imagenet import SMALL, make_tiny_imagenet

SYNTH = "synthetic:64:32"
# 6 iterations of batch 8 per run, 2 evaluations.
TINY = ["--data", SYNTH, "--budget", "0.0001", "--batch-size", "8", "--eval-points", "2",
        "--device", "cpu", "--no-progress"]


def reproduce(*args: str) -> int:
    return main(["reproduce", *args, *TINY])


def no_training(monkeypatch) -> None:
    monkeypatch.setattr(trainer, "train", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a finished run was trained again")))


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- stop signals and a dying parent (subprocesses) -----------------------------------------

def sweep_command(out: Path, budget: str, seeds: int) -> list[str]:
    return [sys.executable, "-m", "reslab", "reproduce", "table6", "--data", SYNTH,
            "--budget", budget, "--batch-size", "8", "--eval-points", "2", "--device", "cpu",
            "--no-progress", "--out", str(out), "--models", "resnet8", "--seeds", str(seeds),
            "--jobs", "2"]


def start_sweep(out: Path, budget: str, seeds: int) -> subprocess.Popen:
    """The sweep in a session of its own (so that its process group can get a Ctrl-C)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(sweep_command(out, budget, seeds), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for_workers(proc: subprocess.Popen, folders: list[Path]) -> list[int]:
    """The pids of the workers training `folders` (from their lock files) once each has
    written its run.json (the run is set up and about to train)."""
    deadline = time.time() + 240
    while not all((f / "run.json").exists() and (f / ".lock").exists() for f in folders):
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, "the workers did not start"
        time.sleep(0.1)
    pids = [int((f / ".lock").read_text().split()[0]) for f in folders]
    assert proc.pid not in pids  # the runs train in workers
    return pids


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float) -> None:
    deadline = time.time() + seconds
    while any(alive(p) for p in pids):
        assert time.time() < deadline, f"workers {[p for p in pids if alive(p)]} still run"
        time.sleep(0.1)


def assert_resumable(folder: Path) -> None:
    """Saved through the trainer's stop path (run.json says so, last.pt holds the same
    iteration) and not locked."""
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "interrupted", info["status"]
    assert Checkpoint.load(folder / "last.pt").iteration == info["finished_iteration"] >= 1
    RunFolder(folder).open(resume=True).close()  # the lock is free


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_ctrl_c_to_the_process_group_stops_a_jobs_sweep(tmp_path):
    """Ctrl-C (SIGINT to the process group) during `--jobs 2`: the two running runs save
    and stop, the queued one never starts, and the command says how to continue."""
    out = tmp_path / "t6"
    proc = start_sweep(out, "0.05", seeds=3)  # 3200 iterations per run: never finished here
    try:
        running = [out / "runs" / "resnet8-s0", out / "runs" / "resnet8-s1"]
        pids = wait_for_workers(proc, running)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    wait_gone(pids, 30)
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("reslab reproduce:")]
    assert "SIGINT" in line and "1 queued run not started (resnet8-s2)" in line
    assert f"reslab reproduce table6 --data {SYNTH} --out {out}" in line and "--jobs 2" in line
    for folder in running:
        assert_resumable(folder)
    assert not (out / "runs" / "resnet8-s2").exists()  # queued: never started


@needs_proc
def test_kill_9_of_the_parent_stops_its_workers(tmp_path):
    """Workers never outlive their sweep: after a kill -9 of the parent they notice, save
    through the trainer's stop path and release their locks (a rerun is not refused as
    'another reslab process is writing')."""
    out = tmp_path / "t6"
    proc = start_sweep(out, "0.05", seeds=2)
    try:
        running = [out / "runs" / "resnet8-s0", out / "runs" / "resnet8-s1"]
        pids = wait_for_workers(proc, running)
        proc.kill()
        proc.wait()
        wait_gone(pids, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for folder in running:
        assert_resumable(folder)


@needs_proc
@pytest.mark.slow  # two sweeps of three runs in subprocesses: about a minute
def test_sigterm_at_the_parent_stops_the_sweep_and_a_rerun_finishes_it(tmp_path):
    """Acceptance of issue 17: `reslab reproduce table6 --jobs 2` sent SIGTERM at its
    parent: within 30 seconds no process of the sweep remains, every run folder is
    resumable, and a rerun finishes the sweep."""
    out = tmp_path / "t6"
    proc = start_sweep(out, "0.002", seeds=3)  # 128 iterations per run
    try:
        running = [out / "runs" / "resnet8-s0", out / "runs" / "resnet8-s1"]
        pids = wait_for_workers(proc, running)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        wait_gone(pids, 30 - (time.time() - sent))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "SIGTERM" in err
    for folder in running:
        assert_resumable(folder)
    rerun = subprocess.run(sweep_command(out, "0.002", seeds=3), capture_output=True,
                           text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["resnet8-s0", "resnet8-s1", "resnet8-s2"]
    assert all(r["iterations"] == 128 for r in results["runs"])


def test_sigterm_between_runs_of_an_in_process_sweep_stops_it(tmp_path, monkeypatch, capsys):
    """Without --jobs a stop that comes between two runs (the trainer's handler is not in
    place there) stops the sweep too, with SIGTERM's exit status 143 and the command."""
    close = runlog.RunLog.close

    def close_then_sigterm(self, *args):
        close(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)  # the run has ended; the next has not begun

    monkeypatch.setattr(runlog.RunLog, "close", close_then_sigterm)
    out = tmp_path / "t6"
    assert reproduce("table6", "--out", str(out), "--models", "resnet8", "--seeds", "2") == 143
    err = capsys.readouterr().err
    assert "SIGTERM" in err and "not started (resnet8-s1)" in err
    assert f"reslab reproduce table6 --data {SYNTH} --out {out} --budget 0.0001" in err
    assert json.loads((out / "runs" / "resnet8-s0" / "run.json").read_text())["status"] \
        == "finished"
    assert not (out / "runs" / "resnet8-s1").exists()


# ---- a net named twice ------------------------------------------------------------------------

def test_duplicate_models_are_trained_and_counted_once(tmp_path, capsys):
    out = tmp_path / "t6"
    with pytest.warns(UserWarning, match="resnet8 more than once"):
        assert reproduce("table6", "--out", str(out), "--models", "resnet8,resnet8",
                         "--seeds", "2") == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["resnet8-s0", "resnet8-s1"]
    (row,) = results["table6"]
    assert row["runs"] == 2 and len(row["test_errors"]) == 2


def test_precision_with_duplicate_models_counts_each_run_once(tmp_path):
    out = tmp_path / "p"
    with pytest.warns(UserWarning, match="more than once"):
        assert reproduce("precision", "--out", str(out), "--models", "resnet8,resnet8",
                         "--seeds", "2") == 0
    results = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in results["runs"]]
    assert sorted(labels) == sorted(f"resnet8-{p}-s{k}" for p in ("fp32", "bf16")
                                    for k in range(2))
    (rows,) = results["precision"]["comparisons"].values()  # one net
    assert rows and all(row["n"] == 2 and len(row["paired_diffs"]) == 2 for row in rows)


def test_a_run_listed_twice_is_trained_once(tmp_path, monkeypatch):
    """The sweep itself trains (and returns) a run listed twice once; two different runs
    for one folder are refused before any trains."""
    cfg = TrainConfig(model="resnet8", data=SYNTH, out=str(tmp_path / "r"), iterations=2,
                      batch_size=8, device="cpu", progress=False, tensorboard=False)
    trained = []

    def train(c, data=None):  # records the run as finished, as the trainer would
        trained.append(c.out)
        Path(c.out).mkdir(parents=True, exist_ok=True)
        (Path(c.out) / "run.json").write_text(json.dumps(
            {"config": c.to_dict(), "status": "finished", "finished_iteration": c.iterations}))
        return trainer.RunResult(Path(c.out), 2, 2, "finished", None, None, 0.0)

    monkeypatch.setattr(trainer, "train", train)
    outcomes = run_sweep([RunSpec("r", cfg), RunSpec("r", cfg)], None, log=lambda m: None)
    assert len(outcomes) == 1 and trained == [cfg.out]
    other = TrainConfig(model="resnet14", data=SYNTH, out=str(tmp_path / "r2"), iterations=2)
    twin = TrainConfig(model="resnet8", data=SYNTH, out=str(tmp_path / "r2"), iterations=2)
    with pytest.raises(ReslabError, match="would both train into"):
        run_sweep([RunSpec("r2", twin), RunSpec("r2", other)], None, log=lambda m: None)
    assert trained == [cfg.out]


# ---- paths compared by what they name ---------------------------------------------------------

def test_the_same_out_spelled_or_moved_otherwise_is_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert reproduce("table6", "--out", "rel/t6/", "--models", "resnet8") == 0
    no_training(monkeypatch)
    assert reproduce("table6", "--out", str(tmp_path / "rel" / "t6"), "--models",
                     "resnet8") == 0
    shutil.move("rel", "moved")  # a moved (or copied) OUT
    assert reproduce("table6", "--out", "./moved//t6", "--models", "resnet8") == 0
    assert capsys.readouterr().err.count("finished earlier") == 2


def test_data_paths_are_compared_by_what_they_name(tmp_path, monkeypatch):
    """`--data inet` and `./inet/` (and the absolute path) are the same data: a run.json
    recording one is reused with another."""
    (tmp_path / "inet").mkdir()
    monkeypatch.chdir(tmp_path)
    def config(data: str) -> TrainConfig:
        return TrainConfig(model="resnet8", data=data, out="o", iterations=6, device="cpu",
                           precision="fp32", recipe="imagenet", workers=0)

    older = {**config(SYNTH).to_dict(), "data": "inet"}  # as an older run.json recorded it
    for spelling in ("./inet/", str(tmp_path / "inet"), "inet"):
        cfg = config(spelling)
        assert cfg.data == str(tmp_path / "inet")  # recorded absolute
        check_same_config("resnet8", {"config": older}, cfg)
        assert not cfg.changes_from(TrainConfig.from_dict(older))  # a resume agrees too
    (tmp_path / "other").mkdir()
    with pytest.raises(ReslabError, match="data: 'inet' there"):
        check_same_config("resnet8", {"config": older}, config("other"))


def make_image_folder(root: Path) -> Path:
    """ROOT/{train,test}/<class>/*.png: 2 classes of 8x8 images."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
                (d / f"{i}.png").write_bytes(encode_png(img).numpy().tobytes())
    return root


def test_train_resume_from_another_folder_finds_relative_data(tmp_path, monkeypatch):
    """`reslab train --resume --out some/dir` from another working directory, of a run
    started with a relative --data, continues it (was: "unknown data 'cfA'")."""
    start, elsewhere = tmp_path / "a", tmp_path / "b"
    make_image_folder(start / "cfA")
    elsewhere.mkdir()
    common = ["--device", "cpu", "--no-progress", "--batch-size", "4", "--eval-every", "2"]
    monkeypatch.chdir(start)
    assert main(["train", "--model", "resnet8", "--data", "cfA", "--out", "run",
                 "--iterations", "2", *common]) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", "--out", str(start / "run"), "--iterations", "4",
                 *common]) == 0
    assert Checkpoint.load(start / "run" / "last.pt").iteration == 4


# ---- run.json of the wrong shape --------------------------------------------------------------

@pytest.mark.parametrize("text", ["[]", '{"config": "x"}', '{"config": {}}',
                                  '{"config": {"model": "resnet8"}, "model_spec": 3}',
                                  "{not json", "\xff\xfe"])
def test_an_unusable_run_json_names_its_run_folder(tmp_path, capsys, text):
    out = tmp_path / "t6"
    folder = out / "runs" / "resnet8"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(text, encoding="latin-1")
    assert reproduce("table6", "--out", str(out), "--models", "resnet8") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{folder / 'run.json'}" in line and f"delete the run folder {folder}" in line
    assert "another --out" not in line


# ---- --budget ---------------------------------------------------------------------------------

def test_absurd_budgets_are_refused_in_one_line(tmp_path, capsys):
    for budget in (float("inf"), 1e300, float("nan"), 0.0, -1.0, 10.5):
        with pytest.raises(ReslabError, match=r"--budget must be a number in \(0, 10\]"):
            Settings(data=SYNTH, out=tmp_path, budget=budget).validate()
    Settings(data=SYNTH, out=tmp_path, budget=10).validate()  # the bound itself is allowed
    for budget in ("inf", "1e300", "nan"):
        assert main(["reproduce", "table6", "--out", str(tmp_path), "--data", SYNTH,
                     "--budget", budget]) == 2
        assert "--budget must be a number in (0, 10]" in one_error_line(capsys.readouterr().err)


# ---- cached evaluations (ImageNet experiments) ------------------------------------------------

def reproduce_table2(root: Path, out: Path) -> int:
    return main(["reproduce", "table2", "--data", str(root), "--out", str(out), "--models",
                 "resnet18", "--budget", "0.00001", "--batch-size", "4", "--eval-points", "2",
                 "--device", "cpu", "--workers", "0", "--no-progress", *SMALL])


@pytest.fixture
def table2(tmp_path):
    """A tiny image folder (3 classes, 2 val images each) and a table2 OUT with resnet18."""
    root = make_tiny_imagenet(tmp_path / "inet", classes=3, train=4, val=2)
    assert reproduce_table2(root, tmp_path / "out") == 0
    return root, tmp_path / "out"


def count_evaluations(monkeypatch) -> list[str]:
    calls = []
    real = imagenet.protocol_scores

    def counted(s, loaded, protocol, engine=None):
        calls.append(protocol)
        return real(s, loaded, protocol, engine)

    monkeypatch.setattr(imagenet, "protocol_scores", counted)
    return calls


def test_cached_evaluations_follow_the_images_and_the_weights(table2, monkeypatch):
    root, out = table2
    calls = count_evaluations(monkeypatch)
    assert reproduce_table2(root, out) == 0
    assert calls == []  # nothing changed: cached
    assert json.loads((out / "results.json").read_text())["table2"]["resnet18"]["images"] == 6
    for c in range(3):  # images added to val/
        shutil.copy(root / "val" / f"class{c}" / "img0.JPEG", root / "val" / f"class{c}" / "n.JPEG")
    assert reproduce_table2(root, out) == 0
    results = json.loads((out / "results.json").read_text())
    assert calls == ["10crop"]
    assert results["table2"]["resnet18"]["images"] == results["data"]["test"] == 9
    img = root / "val" / "class1" / "img1.JPEG"  # an image replaced, the count unchanged
    shutil.copy(root / "val" / "class0" / "img1.JPEG", img)
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert reproduce_table2(root, out) == 0
    assert calls == ["10crop"] * 2
    last = out / "runs" / "resnet18" / "last.pt"  # touched only: the same weights, cached
    st = last.stat()
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert reproduce_table2(root, out) == 0
    assert calls == ["10crop"] * 2
    ckpt = torch.load(last, map_location="cpu", weights_only=False)  # other weights, the
    next(iter(ckpt["model"].values())).add_(1.0)  # same modification time (`cp -p`)
    torch.save(ckpt, last)
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert reproduce_table2(root, out) == 0
    assert calls == ["10crop"] * 3
    cache = json.loads((out / "runs" / "resnet18" / "eval-10crop.json").read_text())
    assert set(cache["key"]) == {"weights", "data", "protocol", "precision"}


def test_weights_of_the_same_size_and_mtime_are_not_served_from_the_cache(tmp_path,
                                                                          monkeypatch):
    """Two checkpoints of one net have the same size; with the modification time set back
    (`cp -p`, `touch -r`, or within the file system's time granularity) the second must
    still be evaluated, not answered from the first's cached evaluation."""
    root = make_tiny_imagenet(tmp_path / "inet", classes=2, train=1, val=1)
    s = Settings(data=str(root), out=tmp_path / "out", device="cpu")
    run = tmp_path / "out" / "runs" / "resnet18"
    run.mkdir(parents=True)
    last = run / "last.pt"
    o = imagenet.RunOutcome("resnet18", None, run, {}, [], False)
    # a "model" is the file's bytes: A classifies both val images right, B both wrong
    monkeypatch.setattr(imagenet, "load_model", lambda path: Path(path).read_bytes())
    calls = []

    def scores(s, loaded, protocol, engine=None):
        calls.append(loaded)
        right = torch.eye(2) if loaded.startswith(b"A") else 1 - torch.eye(2)
        return right, torch.tensor([0, 1])

    monkeypatch.setattr(imagenet, "protocol_scores", scores)
    last.write_bytes(b"A" * 64)
    st = last.stat()
    assert imagenet.evaluate_run(s, o, "10crop")["top1_error"] == 0
    assert imagenet.evaluate_run(s, o, "10crop")["top1_error"] == 0 and len(calls) == 1
    last.write_bytes(b"B" * 64)  # same size, the old modification time
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert last.stat().st_size == st.st_size and last.stat().st_mtime_ns == st.st_mtime_ns
    assert imagenet.evaluate_run(s, o, "10crop")["top1_error"] == 100
    assert calls == [b"A" * 64, b"B" * 64]
    key = json.loads((run / "eval-10crop.json").read_text())["key"]
    assert key["weights"] == {"sha256": hashlib.sha256(b"B" * 64).hexdigest()}


def test_a_val_image_gone_after_the_scan_is_one_line_in_the_cache_key(tmp_path,
                                                                      monkeypatch):
    root = make_tiny_imagenet(tmp_path / "inet", classes=2, train=1, val=2)
    real = imagenet.ImageFolderDataset

    def scanned_then_deleted(path, *a, **k):
        ds = real(path, *a, **k)
        os.unlink(ds.samples[1][0])  # deleted between the scan and its stat
        return ds

    monkeypatch.setattr(imagenet, "ImageFolderDataset", scanned_then_deleted)
    with pytest.raises(ReslabError, match=r"image .*class0.img1.JPEG was gone when read"):
        imagenet.val_fingerprint(Settings(data=str(root), out=tmp_path / "out"))


# ---- the reslab a --jobs worker imports ----------------------------------------------------

def test_jobs_workers_import_this_reslab_without_reordering_the_users_path(tmp_path):
    ours = sweep._package_dir()
    user = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": user}
    link = tmp_path / "link"
    # the worker would import this very reslab (installed, or editable): nothing added, so
    # the folder holding it (site-packages, for an install) never goes before the user's
    assert sweep.worker_env(env, ours, ours, link) == env
    assert not link.exists()
    # it would find none (a checkout put on sys.path by a script): appended, never first
    assert sweep.worker_env(env, ours, None, link)["PYTHONPATH"] == \
        os.pathsep.join([user, str(ours.parent)])
    # it would import another copy: only a link to this one goes first
    decoy = tmp_path / "decoy"
    (decoy / "reslab").mkdir(parents=True)
    (decoy / "reslab" / "__init__.py").write_text("raise ImportError('another reslab')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(decoy), user])}
    assert sweep.child_reslab(env) == (decoy / "reslab").resolve()
    got = sweep.worker_env(env, ours, sweep.child_reslab(env), link)
    assert got["PYTHONPATH"] == os.pathsep.join([str(link), str(decoy), user])
    assert os.listdir(link) == ["reslab"] and (link / "reslab").resolve() == ours
    assert sweep.child_reslab(got) == ours
    # this checkout's tests: the worker imports this reslab as it is
    assert sweep.child_reslab(os.environ) == ours
    assert sweep.worker_env(os.environ, ours, ours, link) == dict(os.environ)


def test_jobs_workers_are_started_with_the_users_pythonpath_as_set(tmp_path, monkeypatch):
    """What `_train_in_parallel` hands each worker process (Popen faked: no training):
    this checkout's reslab is importable anyway, so the user's PYTHONPATH goes unchanged
    (never this checkout's src/ put first, as workers once had it)."""
    user = os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")])  # even "a::b"
    monkeypatch.setenv("PYTHONPATH", user)
    real, started = subprocess.Popen, []

    class Finished:  # a worker that trained its run at once
        returncode = 0

        def __init__(self, args, **kwargs):
            started.append(kwargs["env"])
            Path(args[-1]).write_text(json.dumps(
                {"status": "finished", "iteration": 1, "iterations": 1}))

        def poll(self):
            return 0

    def popen(args, *a, **kwargs):  # the probe (`child_reslab`) runs for real
        worker = isinstance(args, list) and sweep._WORKER_CODE in args
        return (Finished if worker else real)(args, *a, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    runs = [RunSpec(label, TrainConfig(model="resnet8", data=SYNTH, iterations=1,
                                       device="cpu", out=str(tmp_path / label)))
            for label in ("a", "b")]
    logged = []
    sweep._train_in_parallel(runs, 2, logged.append, sweep.StopSignals())
    assert len(started) == 2 and logged == ["a finished (1 iterations)",
                                            "b finished (1 iterations)"]
    for env in started:
        assert env["PYTHONPATH"] == user and env == dict(os.environ)


def test_a_cache_without_its_last_pt_is_one_line(table2, capsys):
    root, out = table2
    (out / "runs" / "resnet18" / "last.pt").unlink()
    assert reproduce_table2(root, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "last.pt is missing" in line and f"delete {out / 'runs' / 'resnet18'}" in line


def test_spellings_of_one_net_in_models_are_one_run():
    from reslab.experiments.sweep import Settings

    s = Settings(data="synthetic", out=Path("unused"),
                 models=["resnet8", "RESNET8", "cifar_resnet8", "resnet14", "vgg16", "VGG16"])
    with pytest.warns(UserWarning, match="more than once"):
        s.validate()
    assert s.models == ["resnet8", "resnet14", "vgg16"]
