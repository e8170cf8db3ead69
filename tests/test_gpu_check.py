"""benchmarks/gpu_check.sh --dry-run: the prepared GPU check runs end to end on CPU at tiny
sizes (the same script, throughput cells and full-schedule run, writing under $OUT)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["model"], c["precision"]) for c in results["cells"]}
    assert cells == {("resnet8", "fp32"), ("resnet8", "bf16"), ("resnet14", "fp32"),
                     ("resnet14", "bf16")}
    assert all(c["images_per_sec"] > 0 and c["projected_64k_s"] > 0 for c in results["cells"])
    full = results["full_run"]
    assert full["iterations"] == 16 and 0 <= full["test_error"] <= 1
    log = (tmp_path / "gpu_check.log").read_text()
    assert "full schedule resnet8" in log and "images/s" in log
