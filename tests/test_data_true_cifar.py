"""The true CIFAR-10 in shared/data (bit-exact members, repacked archive), when present:
the README's main command is run as written, with the archive in `$RESLAB_HOME/data`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-python.tar.gz"
needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")


def readme_main_command() -> list[str]:
    """The `reslab train ...` of the README's install-and-train line."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"&& (reslab train [^\n&]*)\n", text)
    assert m, "README lost its main command"
    return m.group(1).split()


@needs_archive
def test_readme_main_command_trains_on_true_cifar10(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "cifar-10-python.tar.gz").symlink_to(ARCHIVE)
    cmd = readme_main_command()
    assert cmd[:4] == ["reslab", "train", "--model", "resnet20"]
    env = {**os.environ, "RESLAB_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "reslab", *cmd[1:], "--iterations", "3",
                        "--eval-batch-size", "2000", "--no-progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (home / "data" / "downloading").exists()
    assert (home / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()  # unpacked
    run = json.loads((tmp_path / "runs" / "resnet20" / "run.json").read_text())
    assert run["data"]["name"] == "cifar10"
    assert (run["data"]["train"], run["data"]["eval"]) == (50_000, 10_000)
    records = [json.loads(line) for line in
               (tmp_path / "runs" / "resnet20" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["iteration"] == 3 and 0.5 < records[-1]["test_error"] <= 1.0
