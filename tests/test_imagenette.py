"""The ImageNet recipe (Sec. 3.4) on real photos: a few Imagenette images per class (128-px
ImageNet photos, ../shared/data/imagenette-128.tar.gz; skipped without it), read end to end
by `reslab train --recipe imagenet` from the archive as it is, from a folder holding its
top folder, at the sized flags; the warning that the paper's sizes enlarge such photos."""

from __future__ import annotations

import io
import json
import math
import tarfile
import warnings
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.data.image_root import check_source_size, imagenet_root, sized_flags, source_side
from reslab.errors import ReslabError

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE = REPO.parent / "shared" / "data" / "imagenette-128.tar.gz"
SIZED = ["--scale", "128", "160", "--crop", "112", "--test-resize", "128"]
CLASSES, PER_SPLIT = 3, 10


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """A .tar.gz of the archive's first CLASSES classes x PER_SPLIT images per split, under
    its top folder imagenette-128/ as in the original."""
    if not IMAGENETTE.is_file():
        pytest.skip(f"no Imagenette archive at {IMAGENETTE}")
    kept: dict[tuple[str, str], int] = {}
    classes: dict[str, list[str]] = {}
    out = tmp_path_factory.mktemp("imagenette") / "imagenette-subset.tar.gz"
    with tarfile.open(IMAGENETTE) as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4:
                continue
            _, split, wnid, _ = parts
            names = classes.setdefault(split, [])
            if wnid not in names:
                if len(names) == CLASSES:
                    continue
                names.append(wnid)
            if kept.get((split, wnid), 0) == PER_SPLIT:
                continue
            kept[split, wnid] = kept.get((split, wnid), 0) + 1
            dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
            if len(kept) == 2 * CLASSES and all(v == PER_SPLIT for v in kept.values()):
                break
    assert sorted(classes["train"]) == sorted(classes["val"])
    return out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_archive_is_extracted_once_and_its_top_folder_found(subset, home, tmp_path):
    root = Path(imagenet_root(subset))
    assert root.name == "imagenette-128" and root.parent.parent == home / "cache"
    assert len(list((root / "train").glob("*/*.JPEG"))) == CLASSES * PER_SPLIT
    stamp = (root / "train").stat().st_mtime_ns
    assert imagenet_root(str(subset)) == str(root)  # reused, not extracted again
    assert (root / "train").stat().st_mtime_ns == stamp
    assert not list((home / "cache").glob("*.partial-*"))
    parent = tmp_path / "parent"  # a folder holding the top folder, as extracted by hand
    with tarfile.open(subset) as tf:
        tf.extractall(parent, filter="data")
    assert imagenet_root(parent) == str(parent / "imagenette-128")
    assert imagenet_root(parent / "imagenette-128") == str(parent / "imagenette-128")
    (parent / "other").mkdir()  # two sub-folders: which one is meant is not guessed
    with pytest.raises(ReslabError, match="not an ImageNet-layout"):
        imagenet_root(parent)
    with pytest.raises(ReslabError, match="not a .tar"):
        imagenet_root(next((root / "train").glob("*/*.JPEG")))


def test_the_paper_sizes_on_128px_photos_warn_with_the_flags_that_fit(subset, home):
    paths = sorted(str(p) for p in (Path(imagenet_root(subset)) / "train").glob("*/*.JPEG"))
    assert source_side(paths) == 128 and sized_flags(128) == ((128, 160), 112, 128)
    with pytest.warns(UserWarning, match="--scale 128 160 --crop 112 --test-resize 128"):
        check_source_size(paths, (256, 480), "imagenette")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_source_size(paths, (128, 160), "imagenette")  # sized: no warning


def test_train_reads_real_photos_from_the_archive_end_to_end(subset, home, tmp_path, capsys):
    """Acceptance (issue 23): 2 iterations of ResNet-18 at the sized recipe from the
    archive itself; run.json records the data as given and the losses are finite."""
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the training images")  # sized: no size warning
        assert main(["train", "--model", "resnet18", "--recipe", "imagenet", "--data",
                     str(subset), "--iterations", "2", "--batch-size", "4", "--eval-every",
                     "2", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                     "--no-progress", "--out", str(out), *SIZED]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["data"] == str(subset) and info["config"]["crop"] == 112
    assert info["data"]["train"] == CLASSES * PER_SPLIT == info["data"]["eval"]
    assert len(info["data"]["classes"]) == CLASSES
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["train_loss"]) for r in records)
    assert records[-1]["iteration"] == 2 and 0 <= records[-1]["test_error"] <= 1
    capsys.readouterr()  # `reslab eval` reads the archive too, 10-crop at the run's sizes
    assert main(["eval", "--weights", str(out / "last.pt"), "--data", str(subset), "--crops",
                 "10", "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == CLASSES * PER_SPLIT


def test_reproduce_figure4_and_table2_as_a_labelled_miniature(subset, home, tmp_path):
    """`reslab reproduce figure4` then `table2` on real photos: the sized flags, the run
    length and the milestones reach the four runs, and the reports say the data is a
    3-class 128-pixel miniature, not ImageNet (small crops keep the test short)."""
    out = tmp_path / "fig4"
    small = ["--scale", "56", "64", "--crop", "48", "--test-resize", "56"]
    common = ["--data", str(subset), "--out", str(out), "--iterations", "2", "--milestones",
              "1", "--batch-size", "4", "--eval-points", "1", "--device", "cpu",
              "--precision", "fp32", "--workers", "0", "--no-progress", *small]
    assert main(["reproduce", "figure4", *common]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 2 and results["data"]["image_side"] == 128
    what = "imagenette-subset, a 3-class 128-pixel miniature of ImageNet"
    assert results["data"]["miniature"] == what
    for label in ("plain18", "plain34", "resnet18", "resnet34"):
        info = json.loads((out / "runs" / label / "run.json").read_text())
        cfg = info["config"]
        assert (cfg["iterations"], cfg["milestones"], cfg["lr_policy"]) == (2, [1], "step")
        assert (cfg["scale"], cfg["crop"], cfg["test_resize"]) == ([56, 64], 48, 56)
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Figure 4: plain vs residual nets on {what}")
    assert "Not comparable with the paper's numbers" in report and "2 iterations per run" in report
    assert "lr divided by 10 at iterations 1" in report and "[56, 64], 48x48 crops" in report
    assert main(["reproduce", "table2", *common]) == 0  # the same runs, 10-crop tested
    table = (out / "report-table2.md").read_text()
    assert table.startswith(f"# Table 2: plain and residual nets on {what}")
    assert "27.94" in table and "for orientation" in table
    assert set(json.loads((out / "results.json").read_text())["table2"]) == {
        "plain18", "plain34", "resnet18", "resnet34"}


def test_reproduce_length_flags_are_checked(subset, home, tmp_path, capsys):
    base = ["reproduce", "figure4", "--data", str(subset), "--out", str(tmp_path / "x")]
    capsys.readouterr()
    assert main([*base, "--iterations", "4", "--budget", "0.1"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main([*base, "--milestones", "2", "--lr-policy", "plateau"]) == 2
    assert "step policy" in capsys.readouterr().err
    assert main([*base, "--iterations", "4", "--milestones", "4"]) == 2
    assert "inside the run" in capsys.readouterr().err
    assert main(["reproduce", "figure1", "--out", str(tmp_path / "y"), "--iterations",
                 "4"]) == 2
    assert "ImageNet experiments" in capsys.readouterr().err
