"""Synthetic data, spec parsing, validation split (Sec. 4.2's 45k/5k), reslab_home."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reslab.data import ImageSplit, load_image_data, load_synthetic, reslab_home
from reslab.errors import ReslabError


def test_reslab_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path))
    assert reslab_home() == tmp_path
    monkeypatch.delenv("RESLAB_HOME")
    assert reslab_home() == Path.home() / ".cache" / "reslab"


def test_synthetic_defaults_and_determinism():
    a = load_image_data("synthetic")
    assert (len(a.train), len(a.test)) == (2000, 500)
    assert a.train.images.shape == (2000, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.num_classes == 10 and len(a.classes) == 10
    assert a.train.labels.bincount().tolist() == [200] * 10
    b = load_image_data("synthetic")
    assert torch.equal(a.train.images, b.train.images)
    c = load_image_data("synthetic:2000:500:1")
    assert not torch.equal(a.train.images, c.train.images)


def test_synthetic_specs():
    d = load_image_data("synthetic:100:30")
    assert (len(d.train), len(d.test)) == (100, 30)
    d = load_image_data("synthetic:n_train=50,n_test=20,num_classes=4,size=16")
    assert d.train.images.shape == (50, 3, 16, 16) and d.num_classes == 4
    assert len(load_synthetic(40, 10, seed=3).train) == 40
    for bad in ("synthetic:x", "synthetic:1:2:3:4", "synthetic:foo=1", "synthetic:0:5"):
        with pytest.raises(ReslabError, match="synthetic"):
            load_image_data(bad)


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    d = load_image_data("synthetic:500:200")
    mean = d.train.images.float().mean(0)
    x = (d.train.images.float() - mean).flatten(1) / 64
    xt = (d.test.images.float() - mean).flatten(1) / 64
    model = torch.nn.Linear(x.shape[1], d.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(x), d.train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(xt).argmax(1) == d.test.labels).float().mean().item()
    assert acc > 0.8  # chance is 0.1


def test_val_split_sizes_and_disjoint():
    full = load_image_data("synthetic:300:50")
    d = load_image_data("synthetic:300:50", val_split=60, seed=5)
    assert (len(d.train), len(d.val), len(d.test)) == (240, 60, 50)
    rows = {img.numpy().tobytes() for img in full.train.images}
    tr = {img.numpy().tobytes() for img in d.train.images}
    va = {img.numpy().tobytes() for img in d.val.images}
    assert not tr & va and tr | va == rows
    assert torch.equal(d.test.images, full.test.images)
    again = load_image_data("synthetic:300:50", val_split=60, seed=5)
    other = load_image_data("synthetic:300:50", val_split=60, seed=6)
    assert torch.equal(again.val.images, d.val.images)
    assert not torch.equal(other.val.images, d.val.images)
    assert d.train.images.is_contiguous() and d.val.labels.dtype == torch.int64


@pytest.mark.parametrize("k", [300, 1000, -1])
def test_val_split_too_large(k):
    with pytest.raises(ReslabError, match="val_split"):
        load_image_data("synthetic:300:50", val_split=k)


def test_unknown_spec():
    with pytest.raises(ReslabError, match="cifar10"):
        load_image_data("imagenet-does-not-exist")


def test_image_split_checks():
    with pytest.raises(ValueError):
        ImageSplit(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        ImageSplit(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    s = ImageSplit(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    assert len(s) == 2
