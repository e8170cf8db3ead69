"""DDP on CPU (gloo): `torchrun --nproc_per_node 2 -m reslab train` for the ImageNet and
CIFAR recipes, then a 1-process resume of the 2-process run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_imagenet import SMALL, make_tiny_imagenet

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _reslab(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "reslab"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node", str(nproc), "-m", "reslab"]
    r = subprocess.run(launch + args, capture_output=True, text=True, env=_env(), timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_imagenet_recipe_two_ranks_then_resume_on_one(tmp_path):
    root = make_tiny_imagenet(tmp_path / "tiny")
    out = tmp_path / "run"
    common = ["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
              "--batch-size", "8", "--workers", "0", "--device", "cpu", "--eval-every", "2",
              "--no-progress", "--out", str(out), *SMALL]
    r = _reslab(common + ["--iterations", "4"], nproc=2)
    assert r.stdout.count("done: 4 iterations") == 1  # rank 0 reports, rank 1 is quiet
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    assert run["finished_iteration"] == 4 and run["resumed_from"] == 0
    records = _metrics(out)
    assert [m["iteration"] for m in records] == [2, 4]
    for m in records:
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_error"])
        # each rank evaluates its shard of val (3 classes x 3 images); the sum is all of it
        assert m["eval_images"] == 9
    files = sorted(p.name for p in out.iterdir())
    assert files.count("last.pt") == 1 and not [f for f in files if f.endswith(".tmp")]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["world_size"] == 2
    assert tuple(ckpt["preprocess"]["mean"].shape) == (3, 32, 32)  # per-pixel, crop size
    assert not any(k.startswith("module.") for k in ckpt["model"])

    # resume the 2-rank run in one process (the input sizes come from the checkpoint)
    resumed = [a for a in common if a not in SMALL] + ["--iterations", "6", "--resume"]
    _reslab(resumed)
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 1 and run["resumed_from"] == 4
    assert run["finished_iteration"] == 6
    records = _metrics(out)
    assert [m["iteration"] for m in records] == [2, 4, 6]
    assert records[-1]["eval_images"] == 9 and math.isfinite(records[-1]["train_loss"])
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 6


def test_cifar_recipe_two_ranks(tmp_path):
    out = tmp_path / "cifar"
    r = _reslab(["train", "--model", "resnet20", "--data", "synthetic:256:64",
                 "--iterations", "4", "--batch-size", "32", "--eval-every", "4",
                 "--device", "cpu", "--no-progress", "--out", str(out)], nproc=2)
    assert r.stdout.count("done: 4 iterations") == 1
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["finished_iteration"] == 4
    (record,) = _metrics(out)
    assert record["eval_images"] == 64 and math.isfinite(record["train_loss"])
    assert [p.name for p in out.glob("*.pt")].count("last.pt") == 1
