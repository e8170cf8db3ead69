"""The CIFAR-10 JPEG copy in shared/data (see shared/data/README.md), when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reslab.data import load_image_data

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def test_cifar10_jpeg_archive(tmp_path, monkeypatch):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not present")
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path))
    data = load_image_data(str(ARCHIVE), val_split=5000, seed=0, progress=False)
    assert data.classes == CIFAR10_CLASSES
    assert len(data.train) + len(data.val) == 50_000 and len(data.val) == 5000
    assert len(data.test) == 10_000
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    assert data.test.labels.bincount().tolist() == [1000] * 10
    # Second load comes from the cache.
    again = load_image_data(str(ARCHIVE), progress=False)
    assert len(again.train) == 50_000
    assert torch.equal(again.test.images, data.test.images)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
